"""The demo NAS (a local nfs-ganesha) that `nfsj up` and the tests start; not part of the
product's data path.
"""
