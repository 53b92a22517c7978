# Two images from one file:
#
#   docker build -f docker/deploy.Dockerfile --target robot  -t vla-robot  .   # robot PC, CPU, no torch
#   docker build -f docker/deploy.Dockerfile --target server -t vla-server .   # policy server, CUDA GPU
#
# Policy server (GPU box; the checkpoint folder mounted read-only, the token from the environment):
#   docker run --gpus all -p 8765:8765 -e VLA_SERVER_TOKEN -v $PWD/ckpt:/ckpt:ro vla-server \
#       --checkpoint /ckpt --host 0.0.0.0
# Robot PC (USB cameras and the arm's network; --network host for UR's RTDE ports 30001-30004):
#   docker run --rm -it --network host --privileged -v /dev:/dev -e VLA_SERVER_TOKEN vla-robot \
#       --server ws://gpu-box:8765 --robot.type ur --robot.host 192.168.1.10 \
#       --cameras '[{type: realsense, name: corner, serial: "123456789"}]' --instruction "push the puck"

# ---- robot PC: the control loop, drivers and the light client; no torch or transformers ----
FROM python:3.11-slim AS robot
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libusb-1.0-0 libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vla
COPY pyproject.toml README.md ./
COPY vla ./vla
COPY deploy.py ./
# --no-deps: the package's own dependency list is the training stack; the robot PC needs only these
RUN pip install --no-deps . \
    && pip install "numpy==2.2.6" "msgpack==1.1.2" "websockets==15.0.1" "opencv-python-headless==4.12.0.88" \
       "draccus==0.10.0" "pyyaml==6.0.4" "matplotlib==3.11.2" "pyrealsense2==2.56.5.9235" "ur-rtde==1.6.5"
# (recording demos with vla-record writes LeRobot datasets and needs the full install: `pip install .`)
# fail the build if the robot image could pull in torch by accident
RUN python -c "import sys, vla.deploy.run, vla.deploy.client; assert 'torch' not in sys.modules"
ENTRYPOINT ["python", "deploy.py"]

# ---- policy server: the full stack on CUDA ----
# torch 2.10's PyPI wheels bring their own CUDA 12.8 libraries (nvidia-* wheels), so a plain
# Python base image works with `docker run --gpus all` on a host with a recent NVIDIA driver.
FROM python:3.11-slim AS server
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vla
COPY pyproject.toml README.md ./
COPY vla ./vla
RUN pip install .
EXPOSE 8765
# binds 127.0.0.1 unless --host 0.0.0.0 is given; refuses to start without $VLA_SERVER_TOKEN
ENTRYPOINT ["vla-serve"]
