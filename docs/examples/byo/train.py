"""Your own training loop with hpctrain's guarantees (docs/your-model.md).

    python train.py --data shards/digits --run-dir runs/mine                     # one process
    hpctrain launch -n 2 -- python train.py --data shards/digits --run-dir runs/mine
    hpctrain submit --script train.py --ntasks-per-node 2 --time 30 -- --data shards/digits

Run it again with the same --run-dir and it resumes from the newest checkpoint; on USR2
(Slurm preemption) it checkpoints at the next step boundary and, under 'hpctrain submit
--script', the job requeues and resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import hpctrain
from byo_example.model import build


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="shard directory written by 'hpctrain shard'")
    p.add_argument("--run-dir", default=None, help="checkpoints and metrics (under 'submit --script': the job's)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--backend", default="mpi", choices=["mpi", "horovod", "torch"])
    args = p.parse_args(argv)

    with hpctrain.session(args.run_dir, backend=args.backend, checkpoint_every=args.checkpoint_every) as s:
        loader = s.loader(args.data, batch_size=args.batch_size)
        meta = loader.manifest.schema
        model = build(sample_shape=meta.sample_shape, num_outputs=len(meta.classes), width=64, blocks=2)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        model, opt = s.setup(model, opt, clip_grad_norm=1.0)
        state = s.resume({"model": model, "opt": opt})
        for step, (x, y) in s.steps(loader, start=state.step, epochs=args.epochs, max_steps=args.max_steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step % 10 == 0:
                s.log(step, loss=loss.item())
            s.checkpoint_if_due(step)
        if s.is_root:
            print(f"done at step {s.step}; weights in {s.run_dir}/checkpoints", flush=True)
        s.checkpoint(s.step)  # the final weights


if __name__ == "__main__":
    main()
