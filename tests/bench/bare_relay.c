/* The floor any NFS relay has on this host: bytes in, bytes out, nothing else
 * (benchmarks only; tests/bench/bench_proxy.py compiles and runs it).
 *
 *     bare_relay BACKEND_HOST BACKEND_PORT [BACKEND_PORT ...]
 *
 * For each BACKEND_PORT it listens on 127.0.0.1 (a free port) and prints
 * `bare relay: PORT -> BACKEND_PORT`, one line each, then `bare relay: ready`.
 * Every accepted connection gets its own connection to the backend port it
 * stands for; bytes go both ways unchanged. One thread, one epoll set,
 * non-blocking sockets, TCP_NODELAY, a fixed buffer per direction: no RPC
 * framing, no parsing, no journal. The one blocking call is connect() to the
 * backend, once per accepted connection, on loopback.
 * SIGTERM or SIGINT ends it; it prints its CPU time (`bare relay: cpu ...`).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_BYTES (512 * 1024)
#define MAX_LISTENERS 8
#define MAX_EVENTS 64

struct conn;

/* One socket of a relayed pair; `in` holds what it read, for its peer to write. */
struct end {
    int fd;
    int is_listener;
    int backend_port;  /* listeners: where their connections go */
    struct conn *conn;
    struct end *peer;
    char *in;
    size_t start, stop;  /* in[start:stop] waits to be written to peer */
    unsigned watched;   /* events registered with epoll */
};

struct conn {
    struct end client, nas;
    int closed;
    struct conn *next_dead;
};

static volatile sig_atomic_t stopping;
static int epfd;
static struct conn *dead;  /* closed in this batch: freed after it */
static struct sockaddr_in backend;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void nonblocking(int fd) {
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Read while the peer's writes keep up; write what is pending. */
static unsigned wanted(const struct end *e) {
    unsigned ev = 0;
    if (e->start == e->stop) ev |= EPOLLIN;          /* room to read */
    if (e->peer->start != e->peer->stop) ev |= EPOLLOUT; /* the peer's bytes to write here */
    return ev;
}

static void rewatch(struct end *e) {
    unsigned ev = wanted(e);
    if (ev == e->watched) return;
    struct epoll_event event = {.events = ev, .data.ptr = e};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, e->fd, &event) < 0) die("epoll_ctl mod");
    e->watched = ev;
}

static void close_conn(struct conn *c) {
    if (c->closed) return;
    c->closed = 1;
    close(c->client.fd);
    close(c->nas.fd);
    c->next_dead = dead;
    dead = c;
}

/* Write e's pending bytes to its peer; -1 when the pair must close. */
static int flush(struct end *e) {
    while (e->start < e->stop) {
        ssize_t n = write(e->peer->fd, e->in + e->start, e->stop - e->start);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        e->start += (size_t)n;
    }
    e->start = e->stop = 0;
    return 0;
}

static int pump(struct end *e) {
    ssize_t n = read(e->fd, e->in, BUF_BYTES);
    if (n == 0) return -1;
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    e->start = 0;
    e->stop = (size_t)n;
    return flush(e);
}

static void watch(struct end *e, unsigned ev) {
    struct epoll_event event = {.events = ev, .data.ptr = e};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, e->fd, &event) < 0) die("epoll_ctl add");
    e->watched = ev;
}

static void accept_one(struct end *listener) {
    int cfd = accept4(listener->fd, NULL, NULL, SOCK_NONBLOCK);
    if (cfd < 0) return;
    int nfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = backend;
    to.sin_port = htons((unsigned short)listener->backend_port);
    if (nfd < 0 || connect(nfd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("connect to the backend");
        close(cfd);
        if (nfd >= 0) close(nfd);
        return;
    }
    nonblocking(nfd);
    nodelay(cfd);
    nodelay(nfd);
    struct conn *c = calloc(1, sizeof *c);
    char *bufs = malloc(2 * BUF_BYTES);
    if (!c || !bufs) die("malloc");
    c->client = (struct end){.fd = cfd, .conn = c, .peer = &c->nas, .in = bufs};
    c->nas = (struct end){.fd = nfd, .conn = c, .peer = &c->client, .in = bufs + BUF_BYTES};
    watch(&c->client, EPOLLIN);
    watch(&c->nas, EPOLLIN);
}

static void handle(struct end *e, unsigned events) {
    if (e->is_listener) {
        accept_one(e);
        return;
    }
    struct conn *c = e->conn;
    if (c->closed) return;
    /* Pending bytes of the peer go out first (EPOLLOUT here), then read. */
    if ((events & EPOLLOUT) && flush(e->peer) < 0) { close_conn(c); return; }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && e->start == e->stop && pump(e) < 0) {
        close_conn(c);
        return;
    }
    rewatch(e);
    rewatch(e->peer);
}

int main(int argc, char **argv) {
    if (argc < 3 || argc - 2 > MAX_LISTENERS) {
        fprintf(stderr, "usage: %s BACKEND_HOST BACKEND_PORT [BACKEND_PORT ...] (at most %d)\n",
                argv[0], MAX_LISTENERS);
        return 2;
    }
    backend.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[1], &backend.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    static struct end listeners[MAX_LISTENERS];
    for (int i = 2; i < argc; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof at;
        if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0 || listen(fd, 128) < 0 ||
            getsockname(fd, (struct sockaddr *)&at, &len) < 0)
            die("listen");
        struct end *l = &listeners[i - 2];
        *l = (struct end){.fd = fd, .is_listener = 1, .backend_port = atoi(argv[i])};
        watch(l, EPOLLIN);
        printf("bare relay: %d -> %d\n", ntohs(at.sin_port), l->backend_port);
    }
    printf("bare relay: ready\n");
    fflush(stdout);
    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) handle(events[i].data.ptr, events[i].events);
        while (dead) {
            struct conn *c = dead;
            dead = c->next_dead;
            free(c->client.in);
            free(c);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bare relay: cpu user %ld.%06ld s, system %ld.%06ld s\n", (long)ru.ru_utime.tv_sec,
           (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    return 0;
}
