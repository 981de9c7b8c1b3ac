"""hpctrain shard INPUT --out DIR | hpctrain shard verify DIR | hpctrain shard info DIR"""

HELP = "convert CSV/TSV, .npy/.npz, Parquet or a built-in dataset to checksummed HDF5 shards"
DESCRIPTION = """Convert INPUT to HDF5 shards plus manifest.json in DIR, in memory bounded by about one shard.

  hpctrain shard data.csv --out shards/ --label target --val-fraction 0.1
  hpctrain shard sklearn:digits --out shards/ --val-fraction 0.2
  hpctrain shard 'sklearn:digits?missing=0.05&imbalance=10&seed=0' --out shards/
  hpctrain shard 'synthetic:classification?rows=1000000&features=64&classes=10&imbalance=20&missing=0.05' --out s/
  hpctrain shard verify shards/      # sha256, schema and every chunk's fletcher32
  hpctrain shard info shards/        # rows, shards, classes, missing share

INPUT: a .csv/.tsv with a header, a .npy (2-D, label column index --label, default last),
a .npz with x and y, a .parquet (needs pyarrow), sklearn:digits|breast_cancer|wine|iris, or
synthetic:classification?rows=&features=&classes=&imbalance=&missing=&seed=&shape=.
Built-in inputs accept ?missing=F&imbalance=R&seed=S to inject missing values and imbalance.
See docs/data.md.
"""


def add_arguments(p):
    p.add_argument("input", metavar="INPUT", help="input file or built-in spec; or 'verify' / 'info'")
    p.add_argument("dir", nargs="?", metavar="DIR", help="shard directory (for verify / info)")
    p.add_argument("--out", "-o", help="output shard directory (absent or empty)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shards", type=int, help="about this many training shards (equal sizes)")
    g.add_argument("--rows-per-shard", type=int, help="rows per shard file")
    p.add_argument("--label", help="label column (name; an index for .npy). Default: label/target/y/class")
    p.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="regression: keep the labels as float targets (one column, or y (N, k) of a .npz); "
                        "e.g. sklearn:diabetes, synthetic:regression?rows=2000&features=10&targets=2")
    p.add_argument("--compression", choices=["none", "lzf", "gzip"], default="lzf", help="HDF5 filter (default lzf)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the split (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="share of rows per class held out as 'val'")
    p.add_argument("--no-shuffle", action="store_true", help="keep input order (default: shuffle rows)")
    p.add_argument("--force", action="store_true", help="replace an existing shard directory")
    p.add_argument("--quick", action="store_true", help="verify: sha256 and schema only, skip reading the chunks")
    p.add_argument("--json", action="store_true", help="info/verify: print JSON")
    s = p.add_argument_group("security (docs/security.md)")
    s.add_argument("--encrypt", metavar="KEYFILE", help="write the shards AES-256-GCM encrypted with this key "
                   "('hpctrain keygen KEYFILE'); readers then need --key KEYFILE or data.key")
    s.add_argument("--mask", action="append", default=[], metavar="COL:hash|drop|redact",
                   help="mask a feature column before writing: hash (keyed HMAC pseudonym, needs --mask-key), drop "
                        "(remove it), redact (set it to 0); repeatable")
    s.add_argument("--mask-key", metavar="KEYFILE", help="key of --mask COL:hash (same key: same pseudonyms)")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(s, key_help="verify/info: key of encrypted shards (without it verify checks sha256 only)")


def run(args):
    from hpctrain.data.shards import ShardError
    from hpctrain.secure.cliargs import apply

    apply(args)

    if args.input in ("verify", "info") and args.dir is not None:
        return _verify(args) if args.input == "verify" else _info(args)
    if args.input in ("verify", "info"):
        raise ShardError(f"'hpctrain shard {args.input}' needs the shard directory: hpctrain shard {args.input} DIR")
    if args.dir is not None:
        raise ShardError(f"unexpected argument {args.dir!r}; the output directory is given with --out DIR")
    if not args.out:
        raise ShardError("no output directory: pass --out DIR")
    return _write(args)


def _write(args):
    import time

    from hpctrain.data.sources import write_shards

    from hpctrain.secure.keys import load_key
    from hpctrain.secure.mask import parse_mask

    masks = [parse_mask(t) for t in args.mask]
    mask_key = load_key(args.mask_key) if args.mask_key else None
    if args.mask_key and not any(m.method == "hash" for m in masks):
        from hpctrain.secure.mask import MaskError

        raise MaskError("--mask-key is only used by --mask COLUMN:hash; add one or drop --mask-key")
    key = load_key(args.encrypt) if args.encrypt else None
    if key is not None:
        from hpctrain.extras import require

        require("cryptography", "hpctrain shard --encrypt")  # before any output exists
    t0 = time.perf_counter()
    m = write_shards(args.input, args.out, shards=args.shards, rows_per_shard=args.rows_per_shard, label=args.label,
                     compression=args.compression, seed=args.seed, val_fraction=args.val_fraction,
                     shuffle=not args.no_shuffle, overwrite=args.force, task=args.task, encrypt=key, masks=masks,
                     mask_key=mask_key)
    dt = time.perf_counter() - t0
    what = (f"{m.schema.targets} float target(s)" if m.schema.regression else f"{len(m.schema.classes)} classes")
    print(f"wrote {m.rows()} rows ({m.rows('train')} train, {m.rows('val')} val) in {len(m.shards)} shards "
          f"to {args.out} in {dt:.1f} s; sample shape {tuple(m.schema.sample_shape)}, {what}")
    if key is not None:
        print(f"encrypted with key {key.path} (id {key.key_id}); readers need --key or data.key")
    for rec in m.meta.get("masking", []):
        print(f"masked column {rec['column']!r}: {rec['method']}")
    note = inf_note(m)
    if note:
        print(note)
    return 0


def inf_note(m) -> str | None:
    """A written inf or -inf is kept and counted apart from NaN (missing); say so at once, since
    imputation fills only NaN and most models cannot take an infinite input."""
    st = m.column_stats()
    n = int(st.inf_count.sum())
    if not n:
        return None
    cols = [name for name, k in zip(m.schema.feature_names, st.inf_count.tolist()) if k]
    more = f" and {len(cols) - 5} more" if len(cols) > 5 else ""
    return (f"note: {n} infinite feature value(s) kept as +/-inf, in column(s) {', '.join(cols[:5])}{more}. They are "
            "not missing values: imputation fills only NaN, and 'hpctrain profile' flags them. If they mean "
            "'unknown', leave those cells empty (NaN) instead")


def _verify(args):
    import json

    from hpctrain.data.shards import Manifest, verify

    m = Manifest.load(args.dir, check_files=False)
    problems = verify(m, deep=not args.quick)
    if args.json:
        print(json.dumps({"dir": args.dir, "shards": len(m.shards), "problems": problems}, indent=2))
    elif problems:
        for p in problems:
            print(f"FAIL {p}")
        print(f"{len(problems)} problem(s) in {len(m.shards)} shards; re-create the shard directory with "
              "'hpctrain shard INPUT --out DIR --force'")
    elif m.encryption is not None and not _key_held(m):
        print(f"OK {len(m.shards)} shards, {m.rows()} rows: sha256 of the ciphertext matches the manifest (encrypted: "
              "pass --key KEYFILE to check the schema and chunk checksums too)")
    else:
        print(f"OK {len(m.shards)} shards, {m.rows()} rows: sha256, schema"
              f"{'' if args.quick else ', chunk checksums'} and class counts match the manifest")
    return 1 if problems else 0


def _key_held(m) -> bool:
    from hpctrain.secure import keyring

    return any(k.key_id == m.encryption.get("key_id") for k in keyring.held())


def info_dict(m) -> dict:
    out = {"dir": str(m.root), "version": m.version, "sample_shape": list(m.schema.sample_shape),
           "features": m.schema.n_features, "classes": m.schema.classes, "splits": {}}
    if m.schema.class_names:
        out["class_names"] = m.schema.class_names
    for split in ("train", "val"):
        shards = m.shards_for(split)
        if not shards:
            continue
        st = m.column_stats(split)
        total = float(st.total.sum())
        out["splits"][split] = {
            "rows": m.rows(split), "shards": len(shards), "class_counts": m.class_counts(split),
            "missing_share": float(st.nan_count.sum() / total) if total else 0.0,
            "inf_values": int(st.inf_count.sum()),
            "columns_with_missing": int((st.nan_count > 0).sum()),
        }
    return out


def _info(args):
    import json

    from hpctrain.data.shards import Manifest

    m = Manifest.load(args.dir)
    d = info_dict(m)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    labels = (f"{m.schema.targets} regression target(s)" if m.schema.regression else f"{len(d['classes'])} classes")
    print(f"{d['dir']}: format v{d['version']}, sample shape {tuple(d['sample_shape'])} ({d['features']} features), "
          f"{labels}")
    for split, s in d["splits"].items():
        counts = s["class_counts"]
        if not counts:  # regression: no classes to count
            print(f"  {split:5s} {s['rows']:>10d} rows in {s['shards']:>4d} shards; "
                  f"missing {100 * s['missing_share']:.2f}% ({s['columns_with_missing']} columns)")
            continue
        lo, hi = min(counts.values()), max(counts.values())
        ratio = f"{hi / lo:.1f}" if lo else "inf"
        inf = f"; {s['inf_values']} infinite values" if s["inf_values"] else ""
        print(f"  {split:5s} {s['rows']:>10d} rows in {s['shards']:>4d} shards; "
              f"missing {100 * s['missing_share']:.2f}% ({s['columns_with_missing']} columns){inf}; "
              f"imbalance {ratio}:1")
        print(f"        classes {counts}")
    return 0
