//! The LOG format's cross-language vectors (tests/vectors/, logstore/FORMAT.md),
//! checked through the native writer's recovery and frame reader. The Python
//! reader checks the same vectors in tests/unit/test_log_vectors.py.

use std::path::{Path, PathBuf};

use _dataplane::log::orphans::orphans;
use _dataplane::log::segment::frames;
use _dataplane::log::{Log, LogError, LogOptions, RouteKind, Routing};
use serde_json::{json, Value};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nfsj-vectors-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_log(name: &str) -> (PathBuf, Value) {
    copy_log_as(name, name)
}

/// `name`'s LOG copied into the scratch directory `scratch_name`.
fn copy_log_as(name: &str, scratch_name: &str) -> (PathBuf, Value) {
    let dir = scratch(scratch_name);
    for entry in std::fs::read_dir(vectors().join(name).join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let expect = serde_json::from_slice(&std::fs::read(vectors().join(name).join("expect.json")).unwrap()).unwrap();
    (dir, expect)
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn records(log: &Log) -> Vec<Value> {
    let mut out = Vec::new();
    for s in log.segments() {
        let data = std::fs::read(&s.path).unwrap();
        let (found, bad) = frames(&data[..s.size_bytes as usize], s.version, s.first_seq);
        assert!(bad.is_none(), "{bad:?}");
        out.extend(found.iter().map(|f| {
            json!({"seq": f.seq, "stamp": hex(&f.routing.stamp), "route_kind": f.routing.kind as u8,
                   "route": f.routing.route, "payload": hex(&f.payload)})
        }));
    }
    out
}

fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vectors())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("expect.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_vector_opens_as_specified() {
    let names = case_names();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        let (dir, expect) = copy_log(&name);
        let open = &expect["open"];
        match Log::open(&dir, LogOptions::default()) {
            Err(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(open["outcome"], "corrupt", "{name}");
                assert_eq!(path.file_name().unwrap().to_str().unwrap(), open["segment"], "{name}");
                assert_eq!(offset, open["offset"].as_u64().unwrap(), "{name}");
            }
            Err(e) => panic!("{name}: {e}"),
            Ok(log) => {
                assert_eq!(open["outcome"], "ok", "{name}");
                assert_eq!(Value::Array(records(&log)), expect["records"], "{name}");
                assert_eq!(log.last_seq(), open["last_seq"].as_u64().unwrap(), "{name}");
                assert_eq!(log.last_seq() + 1, open["next_seq"].as_u64().unwrap(), "{name}");
                let torn: Vec<Value> = log
                    .torn_tails()
                    .iter()
                    .map(|t| json!({"segment": t.segment.file_name().unwrap().to_str().unwrap(),
                                    "offset": t.offset, "truncated_bytes": t.truncated_bytes,
                                    "after_seq": t.after_seq}))
                    .collect();
                assert_eq!(Value::Array(torn), open["torn"], "{name}");
                // Whatever the vector was, the LOG goes on in the current format.
                let routing = Routing { stamp: core::array::from_fn(|i| i as u8), kind: RouteKind::Handle, route: 42 };
                let seq = log.append(&[b"after"], &routing).unwrap();
                log.close().unwrap();
                drop(log);
                let log = Log::open(&dir, LogOptions::default()).unwrap();
                let last = records(&log).pop().unwrap();
                assert_eq!(last, json!({"seq": seq, "stamp": hex(&routing.stamp), "route_kind": 1,
                                        "route": 42, "payload": hex(b"after")}), "{name}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn native_writer_writes_the_vector_bytes() {
    let expect: Value = serde_json::from_slice(
        &std::fs::read(vectors().join("v2-two-segments/expect.json")).unwrap(),
    )
    .unwrap();
    let dir = scratch("writer");
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    for r in expect["records"].as_array().unwrap().iter().take(3) {
        let routing = Routing {
            stamp: unhex(r["stamp"].as_str().unwrap()).try_into().unwrap(),
            kind: RouteKind::from_u8(r["route_kind"].as_u64().unwrap() as u8).unwrap(),
            route: r["route"].as_u64().unwrap() as u32,
        };
        log.append(&[&unhex(r["payload"].as_str().unwrap())], &routing).unwrap();
    }
    log.close().unwrap();
    let name = "00000000000000000001.seg";
    assert_eq!(
        std::fs::read(dir.join(name)).unwrap(),
        std::fs::read(vectors().join("v2-two-segments/log").join(name)).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn orphan_intents_are_the_ones_specified() {
    let mut checked = 0;
    for name in case_names() {
        // Its own copy: the other tests open the same vectors meanwhile.
        let (dir, expect) = copy_log_as(&name, &format!("orphans-{name}"));
        if let Some(want) = expect.get("orphans") {
            let log = Log::open(&dir, LogOptions::default()).unwrap();
            let found: Vec<Value> = orphans(&log, 0)
                .unwrap()
                .iter()
                .map(|o| json!({"seq": o.seq, "stamp": hex(&o.stamp), "payload": hex(&o.payload)}))
                .collect();
            assert_eq!(&Value::Array(found), want, "{name}");
            checked += 1;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(checked >= 1, "a vector holds intents");
}
