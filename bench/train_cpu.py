"""CPU seconds per training stage, in-process and without a database, on the scaling curve's data (issue 16).

bench/scale.py's timelines (`generate_synthetic`: EVENTS / 100 users, 6,000 items, seed 1, drift at 0.7, from
2020-01-01) are written to a scratch folder (or --data, kept between runs), read into an in-memory event log as
the importer would store it (bench/ranker_quality.py's reader) and trained with `model_train` and the default
TrainingParams, as `manage.py train` does. Prints one JSON line per size: the process's CPU seconds in all and per
stage (`stage_cpu_s`: the steadier figure on a shared machine), wall seconds, peak memory, and the metrics,
baselines and segments, so that two versions of the code compare value for value on the same data.

    nice -n 19 .venv/bin/python bench/train_cpu.py 1000000 3000000 --data /tmp/train-cpu

The log differs from an imported one in its order among events with equal times and keys, so its metrics are
close to, not equal to, bench/scale.py's at the same size.
"""

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ranker_quality

from recommendations.services.synthetic import synthetic_dataset_write
from retraining.ml.params import TrainingParams
from retraining.services.training import model_train

EVENTS_PER_USER, ITEMS, SEED, DRIFT_AT, START = 100, 6000, 1, 0.7, date(2020, 1, 1)  # bench/scale.py's


def size_train(events: int, data: Path) -> dict:
    folder = data / f"scale-{events}"
    if not (folder / "ratings.csv").exists():
        synthetic_dataset_write(
            output=folder,
            users=max(1, events // EVENTS_PER_USER),
            items=ITEMS,
            events=events,
            drift_at=DRIFT_AT,
            seed=SEED,
            start=START,
        )
    log = ranker_quality.event_log_read(folder)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = model_train(output_dir=None, params=TrainingParams(), progress=None, log=log)
    return {
        "events": len(log),
        "cpu_s": round(time.process_time() - cpu_started, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "stage_cpu_s": result.stage_cpu_s,
        "timings_s": result.timings_s,
        "peak_memory_mb": result.peak_memory_mb,
        "metrics": result.metrics,
        "baselines": result.baselines,
        "segments": result.segments,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=int, nargs="+", help="sizes in events, e.g. 1000000 3000000")
    parser.add_argument("--data", type=Path, help="folder for the generated files (default: a scratch folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-cpu-") as scratch:
        for events in args.events:
            print(json.dumps(size_train(events, args.data or Path(scratch)), sort_keys=True), flush=True)
