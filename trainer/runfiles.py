"""The names of what a run folder (`tsd train --out RUN`) holds: one definition, asked by the
trainer's modules that write them and by the tools that read them (light: no torch)."""
from __future__ import annotations

LOG = "log.jsonl"              # one line per logged step
VAL_LOG = "val.jsonl"          # one line per validation: {step, epoch, images_seen, top1, top5, agreement, ...}
                               # (segmentation: miou, pixel_acc, per_class_iou, agreement, teacher_miou, ...)
CONFIG = "config.yaml"         # the resolved train config
CHECKPOINTS = "checkpoints"    # checkpoints/step-N/ (see trainer.checkpoints)
METRICS = "metrics.json"       # the run's final metrics, written last
STUDENT_WEIGHTS = "student.safetensors"
STUDENT_INFO = "student.json"  # arch, classes, preprocessing: what `tsd eval` and `tsd export` need
TENSORBOARD = "tb"
LOCK = "train.lock"            # held while a trainer runs in the folder (see trainer.runfolder)
EVAL = "eval"                  # `tsd eval RUN`'s default output folder
TRACKER = "tracker.json"       # {"mlflow": run id, "wandb": run id}: what --resume continues (see trainer.trackers)

# a folder holding any of these holds a run
RUN_FILES = (LOG, VAL_LOG, CONFIG, CHECKPOINTS, METRICS, STUDENT_WEIGHTS, STUDENT_INFO, TENSORBOARD)
