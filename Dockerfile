# GPU stack of arena-distill: the training/inference environment (requirements.txt + requirements-gpu.txt) in
# /opt/venv, and vLLM in its own environment /opt/venv-vllm (requirements-vllm.txt: vllm 0.33 pins torch 2.14 and
# transformers < 5.21, so it can never share our venv; the stages reach it over HTTP as `vllm serve`).
#
#   docker build -t arena-distill:gpu .                                   # ~30-60 min (flash-attn compiles)
#   docker build --build-arg WITH_FLASH_ATTN=0 -t arena-distill:gpu .     # skip flash-attn (SFT falls back to sdpa)
#   docker run --gpus all --shm-size 16g -v $PWD/data:/app/data -v $PWD/model_path:/app/model_path \
#       -v $PWD/model_save:/app/model_save arena-distill:gpu sh run_tiny.sh
#   docker run --gpus all -p 8000:8000 -v $PWD/model_path:/app/model_path arena-distill:gpu \
#       /opt/venv-vllm/bin/vllm serve model_path/llama31_70b_instruct --tensor-parallel-size 8 --port 8000
#
# Not built or run here: the machine that wrote it has no docker daemon and no GPU. What it rests on, checked
# here: torch==2.13.0 from PyPI depends on the CUDA 13 libraries (nvidia-cudnn-cu13), hence a CUDA 13 image
# (the driver must support CUDA 13; cuDNN comes as a pip wheel with torch); flash-attn builds against the installed torch with nvcc from this
# devel image (--no-build-isolation, requirements-gpu.txt); Python 3.11 is the project's (deadsnakes on 24.04).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG WITH_FLASH_ATTN=1
ARG MAX_JOBS=8
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false GPTQMODEL_CPU_WORKERS=2

RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common git ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-gpu.txt requirements-vllm.txt ./

# Project environment: torch first (pinned), then the rest; flash-attn compiles against that torch.
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -r requirements.txt \
    && if [ "$WITH_FLASH_ATTN" = "1" ]; then \
         MAX_JOBS=${MAX_JOBS} /opt/venv/bin/pip install --no-build-isolation -r requirements-gpu.txt; fi \
    && /opt/venv/bin/pip check

# vLLM server environment, separate on purpose (see the header).
RUN python3.11 -m venv /opt/venv-vllm \
    && /opt/venv-vllm/bin/pip install --upgrade pip \
    && /opt/venv-vllm/bin/pip install -r requirements-vllm.txt

COPY . .
ENV PATH=/opt/venv/bin:$PATH VLLM_BIN=/opt/venv-vllm/bin/vllm
# A quick self-check of the image: the CPU test tier (no GPU needed).
CMD ["python", "-m", "pytest", "-q", "-x", "tests/test_config.py"]
