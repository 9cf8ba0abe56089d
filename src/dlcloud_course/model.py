"""Train the course's shipped payout model: ``python -m dlcloud_course.model [--check]``.

Labs 7, 3 and 8 serve a model of the payout event, and each must run on its own, without
a student's lab 5 result. So the course ships one: **lab 5's model**, the network of the
``build-model`` cell of lab 5's reference solution with the settings of its
``training-settings`` cell, read from ``solutions/lab5-spark-tensorflow/`` with the
course's own lab reader, so that the architecture and the training settings are defined
once. It is trained on the point-in-time quote features of :mod:`dlcloud.features` (the
pandas reference of the table lab 5 builds in Spark) for the train months, and saved as a
TensorFlow SavedModel in TF Serving's layout, ``src/dlcloud/models/pays_out/1/``.

``metadata.json`` next to it records what it was trained from (a digest of the feature
code, of the two lab cells, of this trainer and the TensorFlow version) and its
test-period metrics. ``--check`` fails when that digest no longer matches: then
``make model`` must be run and the new model committed. The training is seeded and
single-threaded, so a re-run reproduces the metrics closely, though not bit for bit. (The
lab streams the same rows from Parquet with ``tf.data``; here they come from memory.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import dlcloud.features as features

VERSION = 1
SEED = 13
# The lab whose reference solution defines the model, and its cells that do.
LAB = "lab5-spark-tensorflow"
MODEL_CELLS = ("build-model", "training-settings")
# The code the model is a function of (with the lab cells): change one and it is stale.
_SOURCES = (Path(features.__file__), Path(__file__))


def lab_cells() -> dict[str, str]:
    """The sources of lab 5's ``MODEL_CELLS``, by grade_id, as the lab reader renders them."""
    from dlcloud_course.labs import find
    from dlcloud_course.render import read_lab_notebook

    cells = {cell.id: cell.source for cell in read_lab_notebook(find(LAB).source).cells}
    missing = [name for name in MODEL_CELLS if name not in cells]
    if missing:
        raise RuntimeError(f"lab {LAB} has no cells {missing}: the shipped model is defined there")
    return {name: cells[name] for name in MODEL_CELLS}


def lab_definitions() -> dict:
    """``build_model``, ``LEARNING_RATE``, ``EPOCHS`` and ``BATCH_SIZE`` of lab 5's reference."""
    namespace = {"FEATURES": list(features.FEATURES)}
    for name, source in lab_cells().items():
        exec(compile(source, f"{LAB}:{name}", "exec"), namespace)  # the course's own lab source
    return namespace


def source_digest() -> str:
    """SHA-256 over the feature code, lab 5's model cells, this trainer, the seed and the
    TensorFlow major.minor."""
    import tensorflow as tf

    digest = hashlib.sha256()
    for path in _SOURCES:
        digest.update(path.read_bytes())
    for name, source in lab_cells().items():
        digest.update(f"{name}\n{source}".encode())
    digest.update(f"seed={SEED} tf={'.'.join(tf.__version__.split('.')[:2])}".encode())
    return digest.hexdigest()


def brier(labels, probabilities) -> float:
    import numpy as np

    return float(np.mean((np.asarray(probabilities, dtype=float) - np.asarray(labels, dtype=float)) ** 2))


def auc(labels, scores) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get their mean rank)."""
    import numpy as np
    import pandas as pd

    labels = np.asarray(labels).astype(bool)
    ranks = pd.Series(np.asarray(scores, dtype=float)).rank().to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def build_model(train_x, definitions: dict | None = None):
    """Lab 5's ``build_model`` with the train months' mean and population variance, compiled
    as the lab compiles it (Adam at its ``LEARNING_RATE``, binary cross-entropy)."""
    import keras
    import numpy as np

    lab = definitions or lab_definitions()
    train_x = np.asarray(train_x, dtype=np.float64)
    model = lab["build_model"](train_x.mean(axis=0).astype("float32"), train_x.var(axis=0).astype("float32"))
    model.compile(optimizer=keras.optimizers.Adam(lab["LEARNING_RATE"]), loss="binary_crossentropy")
    return model


def train(out_dir: Path) -> dict:
    """Train, export ``out_dir/<VERSION>/`` and write ``out_dir/metadata.json``; return it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    keras.utils.set_random_seed(SEED)
    parts = features.split(features.quote_features())
    columns = list(features.FEATURES)
    train_x, train_y = parts["train"][columns].to_numpy(), parts["train"]["pays_out"].to_numpy("float32")
    lab = lab_definitions()
    model = build_model(train_x, lab)
    model.fit(train_x, train_y, epochs=lab["EPOCHS"], batch_size=lab["BATCH_SIZE"], shuffle=True, verbose=0)

    metrics = {}
    for name in ("validation", "test"):
        x, y = parts[name][columns].to_numpy(), parts[name]["pays_out"].to_numpy()
        p = model.predict(x, batch_size=8192, verbose=0)[:, 0]
        metrics[name] = {"rows": len(y), "brier": round(brier(y, p), 5), "auc": round(auc(y, p), 4),
                         "mean_probability": round(float(np.mean(p)), 4), "payout_rate": round(float(np.mean(y)), 4)}

    version_dir = out_dir / str(VERSION)
    shutil.rmtree(version_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.export(str(version_dir), format="tf_saved_model", verbose=False)
    _remove_empty_folders(version_dir)  # git keeps no empty assets/: the same tree as a checkout
    metadata = {
        "name": features.MODEL_NAME,
        "version": VERSION,
        "features": columns,
        "signature": {"input": f"features float32 [batch, {len(columns)}]",
                      "output": "output_0 float32 [batch, 1], the payout probability"},
        "trained_on_months": list(features.TRAIN_MONTHS),
        "defined_by": f"solutions/{LAB}: cells {', '.join(MODEL_CELLS)}",
        "training": {"epochs": lab["EPOCHS"], "batch_size": lab["BATCH_SIZE"],
                     "learning_rate": lab["LEARNING_RATE"], "seed": SEED},
        "label": f"dlcloud.product.pays_out (threshold {features.THRESHOLD_MINUTES} min, cancelled and diverted pay)",
        "metrics": metrics,
        "source_digest": source_digest(),
        "tensorflow": tf.__version__,
    }
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def _remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def check(out_dir: Path) -> list[str]:
    """Problems with the shipped model: missing files or a stale digest."""
    meta_path = out_dir / "metadata.json"
    if not (out_dir / str(VERSION) / "saved_model.pb").exists() or not meta_path.exists():
        return [f"no shipped model in {out_dir}: run `make model` and commit it"]
    recorded = json.loads(meta_path.read_text()).get("source_digest")
    if recorded != source_digest():
        return [f"{out_dir} was trained from other code than dlcloud/features.py, lab 5's cells "
                f"{', '.join(MODEL_CELLS)} and dlcloud_course/model.py now hold: run `make model` and "
                "commit the new model"]
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=features.model_dir())
    parser.add_argument("--check", action="store_true", help="only check that the shipped model is up to date")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    metadata = train(args.out)
    print(json.dumps(metadata["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
