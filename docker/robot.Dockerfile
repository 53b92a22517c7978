# The robot-PC image: the control loop, device drivers and the light policy client; no torch or transformers.
#
#   docker build -f docker/robot.Dockerfile -t vla-robot .
#
# Run it with the USB cameras and the arm's network (--network host: UR's RTDE ports 30001-30004 and the
# Robotiq URCap's 63352), the policy server's token from the environment; first a dry run (docs/bringup.md):
#   docker run --rm -it --network host --privileged -v /dev:/dev -e VLA_SERVER_TOKEN vla-robot \
#       --server ws://gpu-box:8765 --robot.type ur --robot.host 192.168.1.10 --robot.gripper robotiq \
#       --cameras '[{type: realsense, name: corner, serial: "123456789"}]' --instruction "push the puck" \
#       --dry_run true
FROM python:3.11-slim-trixie
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# Debian trixie versions (2026-12); when a build says one is gone, take the new one from `apt-cache policy`
RUN apt-get update && apt-get install -y --no-install-recommends libusb-1.0-0=2:1.0.28-1 libgl1=1.7.0-1+b2 \
        libglib2.0-0t64=2.84.4-3~deb13u5 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vla
COPY docker/robot-requirements.txt ./
RUN pip install -r robot-requirements.txt
COPY pyproject.toml README.md deploy.py ./
COPY vla ./vla
# --no-deps: the package's own dependency list is the training stack; recording demos with vla-record writes
# LeRobot datasets and needs the full install (`pip install .`). The last check fails the build if the robot
# image could pull in torch by accident.
RUN pip install --no-deps . \
    && python -c "import sys, vla.deploy.run, vla.deploy.client; assert 'torch' not in sys.modules"
ENTRYPOINT ["python", "deploy.py"]
