# The training image: vla-train on CUDA GPUs with DeepSpeed, on one node or many.
#
#   docker build -f docker/train.Dockerfile -t vla-train .
#
# One node, all its GPUs, DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml with configs/deepspeed/zero2.json);
# outputs and the HF cache (datasets, base VLMs) on the host:
#   docker run --gpus all --ipc=host -v $PWD/outputs:/opt/vla/outputs -v $HOME/.cache/huggingface:/home/vla/.cache/huggingface \
#       vla-train accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \
#       --deepspeed_config_file configs/deepspeed/zero2.json --num_processes 8 train.py --config_path configs/train/...
# Many nodes under SLURM: scripts/slurm/train.sbatch (VLA_IMAGE runs it in this image through pyxis / enroot).
#
# The CUDA toolkit (nvcc 12.8, the CUDA torch 2.10's wheels are built for) is here because DeepSpeed is installed with
# DS_BUILD_OPS=0: no op is compiled at build time (no GPU needed to build); ops such as FusedAdam are JIT-compiled on
# first use and cached in ~/.cache/torch_extensions. Python 3.11 (the project's) is uv's standalone build: Ubuntu 24.04
# ships 3.12; the uv version pins the Python patch release.
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive \
    UV_NO_CACHE=1 UV_PYTHON_INSTALL_DIR=/opt/python VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    DS_BUILD_OPS=0
# Ubuntu 24.04 versions (2026-12); when a build says one is gone, take the new one from `apt-cache policy`.
# ffmpeg: LeRobot's video decoding (torchcodec); libgl1, libglib2.0: OpenCV; g++: DeepSpeed's JIT op builds
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg=7:6.1.1-3ubuntu5 g++=4:13.2.0-7ubuntu1 \
        libgl1=1.7.0-1build1 libglib2.0-0t64=2.80.0-6ubuntu3.9 \
    && rm -rf /var/lib/apt/lists/*
RUN uv venv --python 3.11 /opt/venv
WORKDIR /opt/vla
COPY pyproject.toml README.md train.py ./
COPY vla ./vla
# the pins are pyproject.toml's, deepspeed's in its `deepspeed` extra; the check fails the build if DeepSpeed or the
# training loop cannot be imported
RUN uv pip install ".[deepspeed]" \
    && python -c "import deepspeed, vla.training.train; print('deepspeed', deepspeed.__version__)"
COPY configs ./configs
COPY scripts/slurm ./scripts/slurm
# a user of its own, vla (1001: Ubuntu's image has `ubuntu` at 1000), owning the working folder for outputs/
RUN useradd --create-home --uid 1001 --user-group --shell /bin/bash vla && chown 1001:1001 /opt/vla
USER 1001:1001
ENV HF_HOME=/home/vla/.cache/huggingface
CMD ["vla-train", "--help"]
