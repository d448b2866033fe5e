"""Padding share of the LM trainer's rows: the first --rows micro batches of one row, as
`vidlm lm train` packs them, for pack windows of 1 (draw order), 16 and 64 (the default)."""
import argparse
import json
import time

import torch
from vidlm.lm.config import DataConfig
from vidlm.lm.stream import TaskStream, micro_batch
from vidlm.lm.tokendata import TokenStore
from vidlm.lm.vocab import Vocab

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--data", required=True, help="token folder (`vidlm data tokenize --out`)")
p.add_argument("--row-len", type=int, required=True, help="the recipe's seq_len")
p.add_argument("--tasks", type=json.loads, default=None, help='task mix as JSON (default: the default mix)')
p.add_argument("--rows", type=int, default=200)
args = p.parse_args()
torch.set_num_threads(1)
clips, vocab = TokenStore.open(args.data), Vocab.from_pretrained(args.data)
for window in (1, 16, 64):
    cfg = DataConfig(tasks=args.tasks or DataConfig().tasks, pack_window=window)
    stream = TaskStream(clips, vocab, cfg, seed=0, rank=0, world=1, row_len=args.row_len)
    cursor, real, t0 = 0, 0, time.time()
    for _ in range(args.rows):
        batch, cursor = micro_batch(stream, cursor, 1, args.row_len)
        real += int((batch["doc_ids"] >= 0).sum())
    print(f"window {window}: padding {1 - real / (args.rows * args.row_len):.3f}, "
          f"{cursor / args.rows:.2f} sequences a row ({time.time() - t0:.1f} s)")
