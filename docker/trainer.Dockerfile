# The trainer image: reads releases and distils students. The base install only: no ray, no
# diffusers, no transformers, no teacher (the `pipeline` extra is the worker image's).
#   docker build -f docker/trainer.Dockerfile -t tsdistill-trainer:0.1.0 .
#   docker run --gpus all --shm-size 16g -v /data:/data tsdistill-trainer:0.1.0 \
#       tsd train /data/train.yaml --out /data/runs/cub200-resnet50
# A slim Python base: torch's CUDA wheels bring their own CUDA libraries; the driver comes from
# the host (NVIDIA container toolkit), so no CUDA base image is needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch from the CUDA 12.4 wheel index (the same torch as the worker image)
RUN pip install --index-url https://download.pytorch.org/whl/cu124 torch==2.5.1 torchvision==0.20.1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
RUN pip install .

RUN useradd --create-home --uid 1000 tsd
USER tsd
WORKDIR /home/tsd
CMD ["tsd", "--help"]
