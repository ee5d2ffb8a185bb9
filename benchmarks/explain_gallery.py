"""Pictures of a run's right and wrong validation predictions with their evidence maps.

Predicts the run's validation images, then draws (``sppnet explain``'s pictures, the two
likeliest classes each) the first ``--right`` correctly classified ones and the first ``--wrong``
mistakes, mistakes between ``--confused`` classes first (default roses and tulips).

    python benchmarks/explain_gallery.py runs/spp --out docs/explain [--right 2] [--wrong 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sppnet import data
from sppnet.explain import draw, explain_top
from sppnet.predict import Predictor
from sppnet.runs import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", default="docs/explain")
    parser.add_argument("--right", type=int, default=2)
    parser.add_argument("--wrong", type=int, default=4)
    parser.add_argument("--confused", default="roses,tulips")
    args = parser.parse_args()
    config = RunFolder(args.run).run_config()
    dataset = data.scan(data.locate(config.data.source))
    _, val = data.run_split(dataset, config.data.val_split, config.data.seed, config.data.holdout)
    predictor = Predictor.from_run(args.run, flip=False)
    confused = set(args.confused.split(","))
    right, wrong, other_wrong = [], [], []
    for path, label, result in zip(val.paths(), val.labels, predictor.predict_many(val.paths())):
        if isinstance(result, Exception):
            continue
        truth = config.class_names[label]
        if result.class_name == truth:
            right.append((path, truth))
        elif {truth, result.class_name} <= confused:
            wrong.append((path, truth))
        else:
            other_wrong.append((path, truth))
    chosen = right[: args.right] + (wrong + other_wrong)[: args.wrong]
    out = Path(args.out)
    for path, truth in chosen:
        explanations = explain_top(predictor, path, k=2)
        verdict = "right" if explanations[0].class_name == truth else f"wrong, truly {truth}"
        picture = draw(explanations, out / f"{path.stem}.{verdict.split(',')[0]}.png")
        print(f"{picture}: predicted {explanations[0].class_name} ({100 * explanations[0].probability:.1f} %), {verdict}")


if __name__ == "__main__":
    main()
