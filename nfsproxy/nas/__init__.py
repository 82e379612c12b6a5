"""The proxy as an NFS client of the NAS: the codec client, the baseline scan, push-back
of a restore, and verify against the live NAS.
"""
