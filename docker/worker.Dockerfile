# The GPU worker image: the generation side (ingest, probe, plan, generate on Ray, release) and
# the Ray head/worker of manifests/rayjob-generate.yaml.
#   docker build -f docker/worker.Dockerfile -t tsdistill-worker:0.1.0 .
#   docker run --gpus all -v /data:/data tsdistill-worker:0.1.0 tsd plan /data/job.yaml --dry-run
# CUDA runtime 12.4 with cuDNN; torch built for the same CUDA (the cu124 wheel index).
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# wget: KubeRay's readiness and liveness probes call it
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index matching the base image's CUDA, so `.[pipeline]` finds it satisfied
RUN pip install --index-url https://download.pytorch.org/whl/cu124 torch==2.5.1 torchvision==0.20.1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
# the pipeline extra (ray pinned in pyproject.toml: the RayJob's rayVersion), and s3:// storage
RUN pip install ".[pipeline,s3]" "ray[default]==2.60.0"

RUN useradd --create-home --uid 1000 tsd
USER tsd
WORKDIR /home/tsd
CMD ["tsd", "--help"]
