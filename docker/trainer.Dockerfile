# The trainer image: reads releases and distils students. The base install only: no ray, no
# diffusers, no transformers, no teacher (the `pipeline` extra is the worker image's).
#   docker build -f docker/trainer.Dockerfile -t tsdistill-trainer:0.1.0 .
#   docker run --gpus all --shm-size 16g -v /data:/data tsdistill-trainer:0.1.0 \
#       tsd train /data/train.yaml --out /data/runs/cub200-resnet50
# Check an image on its GPU:  docker run --gpus all tsdistill-trainer:0.1.0 tsd bench train --device cuda
# A slim Python base (the Python CI tests: 3.11, with its headers): torch's CUDA wheels bring their
# own CUDA libraries; the driver comes from the host (NVIDIA container toolkit).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# a C compiler: Triton builds a small C stub at first use (runtime.compile), against Python's headers
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY constraints.txt ./
# torch from the CUDA 13.0 wheel index, the version of the tested stack (constraints.txt); its
# dependencies at their constrained versions from PyPI (the torch index mirrors only some)
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cu130 \
    --extra-index-url https://pypi.org/simple torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
RUN pip install -c constraints.txt .

RUN useradd --create-home --uid 1000 tsd
USER tsd
WORKDIR /home/tsd
CMD ["tsd", "--help"]
