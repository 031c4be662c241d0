# The GPU worker image: the generation side (ingest, probe, plan, generate on Ray, release) and
# the Ray head/worker of manifests/rayjob-generate.yaml.
#   docker build -f docker/worker.Dockerfile -t tsdistill-worker:0.1.0 .
#   docker run --gpus all -v /data:/data tsdistill-worker:0.1.0 tsd plan /data/job.yaml --dry-run
# Check an image on its GPU (the generator's classes load, the fused path runs beside the stock one):
#   docker run --gpus all tsdistill-worker:0.1.0 tsd bench generate --size tiny
# The Python CI tests (3.11, with its headers; diffusers and transformers 5 need >= 3.11); torch's
# CUDA wheels bring their own CUDA libraries (cuDNN, nvjpeg, NCCL); the driver comes from the host.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# gcc: Triton builds a small C stub at first use (generator.compile, cuda_graphs); wget: KubeRay's
# readiness and liveness probes call it
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY constraints.txt ./
# torch first, from the CUDA 13.0 wheel index at the tested version, so `.[pipeline]` finds it
# satisfied; its dependencies at their constrained versions from PyPI (the torch index mirrors only some)
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cu130 \
    --extra-index-url https://pypi.org/simple torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
# the pipeline extra at the tested versions (ray: the RayJob's rayVersion), and s3:// storage
RUN pip install -c constraints.txt ".[pipeline,s3]" "ray[default]==2.60.0"

RUN useradd --create-home --uid 1000 tsd
USER tsd
WORKDIR /home/tsd
CMD ["tsd", "--help"]
