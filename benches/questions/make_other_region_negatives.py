#!/usr/bin/env python3
"""Writes other-region-negatives.jsonl beside this script: questions for `medsee eval --questions`
about structures that cannot be in the image although it is of a modality they are imaged in —
a fetal head asked of a carotid ultrasound, a prostate of a cardiac MRI slice. The generated
evaluation's negatives are all of other modalities; these check that presence read from the place
maps (which learn other regions' maps empty) does not find what is not there.

For every validation image: up to three classes (seeded) of its modality whose body region (the
knowledge table's `region`) none of its data set's classes is in, each asked in one explicit
phrasing held out of training ("Can you find the … here?"), with class null (absent).

Usage: python3 benches/questions/make_other_region_negatives.py [DATA_DIR]
"""
import collections
import json
import pathlib
import random
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
data = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "medseg"
knowledge = tomllib.loads((ROOT / "src" / "reason" / "knowledge.toml").read_text())


def entry(cls):
    """(name, region) of a class; sided classes share their base entry."""
    if cls in knowledge:
        return knowledge[cls]["name"], knowledge[cls]["region"]
    side, _, base = cls.partition("_")
    return f"{side} {knowledge[base]['name']}", knowledge[base]["region"]


modalities = collections.defaultdict(set)
for c in json.loads((data / "classes.json").read_text()):
    modalities[c["class"]].add(c["modality"])
records = [json.loads(line) for line in (data / "index.jsonl").read_text().splitlines() if line.strip()]
set_regions = collections.defaultdict(set)
for r in records:
    set_regions[r["set"]].add(entry(r["class"])[1])
images = {}
for r in records:
    if r["split"] == "val":
        images[r["id"]] = (r["set"], r["modality"])

rng = random.Random(7)
lines = []
for image_id, (data_set, modality) in sorted(images.items()):
    candidates = [c for c in sorted(modalities) if modality in modalities[c] and entry(c)[1] not in set_regions[data_set]]
    for cls in rng.sample(candidates, min(3, len(candidates))):
        lines.append(json.dumps({"id": image_id, "question": f"Can you find the {entry(cls)[0]} here?", "class": None}))
(HERE / "other-region-negatives.jsonl").write_text("\n".join(lines) + "\n")
print(f"{len(lines)} questions -> {HERE / 'other-region-negatives.jsonl'}")
