# The policy-server image: the full stack on a CUDA GPU.
#
#   docker build -f docker/server.Dockerfile -t vla-server .
#
# The checkpoint folder mounted read-only, the shared token from the environment:
#   docker run --gpus all -p 8765:8765 -e VLA_SERVER_TOKEN -v $PWD/ckpt:/ckpt:ro vla-server \
#       --checkpoint /ckpt --host 0.0.0.0
# torch 2.10's PyPI wheels bring their own CUDA 12.8 libraries (nvidia-* wheels), so a plain Python base image
# works with `docker run --gpus all` on a host with a recent NVIDIA driver.
FROM python:3.11-slim-trixie
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
# Debian trixie versions (2026-12); when a build says one is gone, take the new one from `apt-cache policy`
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg=7:7.1.5-0+deb13u1 libgl1=1.7.0-1+b2 \
        libglib2.0-0t64=2.84.4-3~deb13u5 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vla
COPY pyproject.toml README.md ./
COPY vla ./vla
RUN pip install .
EXPOSE 8765
# binds 127.0.0.1 unless --host 0.0.0.0 is given; refuses to start without $VLA_SERVER_TOKEN
ENTRYPOINT ["vla-serve"]
