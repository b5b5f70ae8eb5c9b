"""Probe: does SmolLM2-135M read facts from a memory bank at all? A 10^3-token passkey document (8 facts), the
four-way multiple choice of the long-memory task, for several site layers / strengths / normalizations.

    python experiments/memory_probe.py   # ~5 min on 1 busy core; output in reports/memory_banks.md
"""
import random
import time

import numpy as np
import torch

import memory_inception as mi
from memory_inception.core.memory import as_memory, build_memory
from memory_inception.evaluation.tasks.long_memory import make_document
from memory_inception.methods.interface import Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.runners import score_shared

torch.set_num_threads(1)
model, tok = mi.load_model(device="cpu")
doc, facts = make_document(tok, 1000, 8, 0)
t=time.time()
mem_all = build_memory(model, tok, doc, layers="all", top_k=32)
print("build", time.time()-t, mem_all.num_slots)
def acc(method):
    ch, mar = [], []
    for f in facts:
        others=[g.number for g in facts if g.number!=f.number]
        cands=[f.number]+random.Random(f.number).sample(others,3)
        lps=score_shared(model,tok,method,[{"role":"user","content":f.question}],[f" {c}" for c in cands],answer_prefix=f.answer_prefix)
        s=[float(l.sum()) for l in lps]; ch.append(int(np.argmax(s))==0); mar.append(s[0]-max(s[1:]))
    return np.mean(ch), np.mean(mar)
print("plain", acc(Plain()))
default_layers = list(range(21,27))
for layers, rho, norm, snorm in ((default_layers,3.0,"retrieved","paper"), (default_layers,10.0,"retrieved","paper"), ("all",0.0,"retrieved","none"), ("all",3.0,"retrieved","paper"), ("mid", 0.0, "retrieved", "none")):
    L = list(range(30)) if layers=="all" else (list(range(8,30)) if layers=="mid" else layers)
    bank = as_memory(mem_all.restrict(L), top_k=32, normalize=norm)
    st = mi.Steering(target=bank, sites=mi.Sites({l: None for l in L}), rho=rho, normalize=snorm)
    t=time.time(); print(layers if layers!="mid" else "8-29", rho, norm, snorm, acc(MI(st)), round(time.time()-t,1))
