#!/usr/bin/env python3
"""Leave-one-out check of the calibration's decision rule (src/train/calibrate.rs).

Reads the `calibration.json` a `medsee train` run writes (every held-out question's outcome
under every decoder prompt and box scale, per class) and answers each question with the choices
the other questions make, for several required margins (in standard errors) and numbers of
questions from which a class decides alone. Prints box Acc@0.5 and the mean mask + answered box
IoU per rule. The rule mirrors calibrate.rs; keep the two in step.

    python3 scripts/calibration-loo.py benches/results/calibration.json
"""
import json
import math
import sys

PROMPTS, SCALES, ANCHOR_ONLY, UNIT = 6, 5, 5, 0
MIN_QUESTIONS_PER_CLASS = 10


def mean_and_error(diffs):
    n = len(diffs)
    mean = sum(diffs) / max(n, 1)
    if n < 2:
        return mean, math.inf
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n)


def clear(diffs, margin):
    gain, error = mean_and_error(diffs)
    return gain > margin * error


def choice(outcomes, margin):
    """(prompt, answer box index, scale index), as GateEvidence::choice makes them."""
    if not outcomes:
        return ANCHOR_ONLY, 0, UNIT
    n = len(outcomes)
    means = [sum(q[i][UNIT]["mask_iou"] for q in outcomes) / n for i in range(PROMPTS)]
    prompt = ANCHOR_ONLY
    for i in range(ANCHOR_ONLY):
        if clear([q[i][UNIT]["mask_iou"] - q[ANCHOR_ONLY][UNIT]["mask_iou"] for q in outcomes], margin):
            if prompt == ANCHOR_ONLY or means[i] > means[prompt]:
                prompt = i
    boxes = [q[prompt][UNIT]["box_ious"] for q in outcomes]
    answer = 1 if clear([b[1] - b[0] for b in boxes], margin) else 0

    def score(q, s):
        o = q[prompt][s]
        return o["mask_iou"] + o["box_ious"][answer]

    scale_means = [sum(score(q, s) for q in outcomes) / n for s in range(SCALES)]
    scale = UNIT
    for s in range(SCALES):
        if s != UNIT and clear([score(q, s) - score(q, UNIT) for q in outcomes], margin):
            if scale == UNIT or scale_means[s] > scale_means[scale]:
                scale = s
    return prompt, answer, scale


def leave_one_out(evidence, margin, min_per_class):
    """Each question answered with the choices made without it: its class's own, with at least
    `min_per_class` other questions, else those of all classes pooled."""
    boxes, score, n = 0, 0.0, 0
    for cls, e in evidence.items():
        for left_out in range(len(e["outcomes"])):
            own = [q for j, q in enumerate(e["outcomes"]) if j != left_out]
            if len(own) < min_per_class:
                own = [q for c, f in evidence.items() for j, q in enumerate(f["outcomes"]) if not (c == cls and j == left_out)]
            prompt, answer, scale = choice(own, margin)
            o = e["outcomes"][left_out][prompt][scale]
            boxes += o["box_ious"][answer] >= 0.5
            score += o["mask_iou"] + o["box_ious"][answer]
            n += 1
    return boxes, score / max(n, 1), n


def main():
    evidence = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benches/results/calibration.json"))
    print(f"{'margin (SE)':>11} {'alone from':>10} {'box@0.5':>9} {'mask + box IoU':>15}")
    for margin in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        for alone in (4, MIN_QUESTIONS_PER_CLASS, 20):
            boxes, score, n = leave_one_out(evidence, margin, alone)
            print(f"{margin:>11} {alone:>10} {boxes:>4}/{n:<4} {score:>15.4f}")


if __name__ == "__main__":
    main()
