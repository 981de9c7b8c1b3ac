"""hpctrain keygen KEYFILE"""

HELP = "write a new random AES-256 key file (mode 0600) for --encrypt, --key, data.key and --mask"
DESCRIPTION = """Write a new random 256-bit key to KEYFILE with mode 0600. An existing file is never overwritten.

  hpctrain keygen ~/.hpctrain/project.key
  hpctrain shard data.csv --out shards/ --encrypt ~/.hpctrain/project.key
  hpctrain train config.yaml --key ~/.hpctrain/project.key

Keep the key in a private directory (0700) on a file system the compute nodes can read, and keep
a copy somewhere safe: data encrypted with a lost key cannot be recovered. See docs/security.md.
"""


def add_arguments(p):
    p.add_argument("keyfile", metavar="KEYFILE", help="path of the new key file (must not exist)")


def run(args):
    from hpctrain.secure.keys import keygen

    key = keygen(args.keyfile)
    print(f"wrote key {key.path} (mode 0600, id {key.key_id}); keep a copy somewhere safe: data encrypted with a "
          "lost key cannot be recovered")
    return 0
