"""Recording episodes into a LeRobot dataset, through the same control loop and safety layer.

    # ~10 teleoperated demos on a new arm (LeRobot leader arm as the teleoperator):
    vla-record --robot.type lerobot ... --teleop.type lerobot --teleop.device so101_leader \\
        --teleop.port /dev/ttyACM1 --instruction "put the cube in the bowl" --episodes 10
    # scripted expert demos in the simulator, recorded like a real robot's:
    vla-record --robot.type sim --robot.task push --teleop.type sim_expert --episodes 10

A teleoperator is run as a policy with a one-action horizon, synchronously, so a recorded
demo passes the same watchdog, safety limits and e-stop as a deployed policy. Deploy runs can
record their rollouts too (`vla-deploy --record_repo_id ...`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np

from vla.deploy.chunking import ScheduleConfig
from vla.deploy.loop import ControlLoop, LoopConfig, fit_image
from vla.deploy.protocol import ObservationMessage, PolicySpec
from vla.deploy.realtime import EStop
from vla.deploy.safety import SafetyConfig
from vla.deploy.session import device_session
from vla.robot_io.base import Robot, RobotSpec
from vla.robot_io.config import CameraConfig, RobotConfig

log = logging.getLogger(__name__)


class EpisodeRecorder:
    """Frames of the control loop -> a LeRobot dataset (images resized to image_size, as the policy sees them)."""

    def __init__(self, root: str | Path, repo_id: str, spec: RobotSpec, cameras: list[str], image_size: int,
                 fps: float):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        from vla.data.embodiment import write_action_kind
        from vla.data.features import lerobot_features  # vla.data pulls in torch: only when recording

        if Path(root).exists():
            raise FileExistsError(f"{root} exists; record into a new folder (nothing is overwritten)")
        self.cameras, self.image_size = cameras, image_size
        self.dataset = LeRobotDataset.create(
            repo_id=repo_id, fps=round(fps), root=root, robot_type=spec.embodiment, use_videos=False,
            features=lerobot_features(cameras, image_size, spec.state_names, spec.action_names))
        write_action_kind(root, spec.action_kind)  # LeRobot's metadata has no place for it
        self.frames = 0
        self.episodes = 0

    def add(self, images: dict[str, np.ndarray], state: np.ndarray, action: np.ndarray, instruction: str) -> None:
        frame = {f"observation.images.{c}": fit_image(images[c], self.image_size) for c in self.cameras}
        frame |= {"observation.state": np.asarray(state, np.float32), "action": np.asarray(action, np.float32),
                  "task": instruction}
        self.dataset.add_frame(frame)
        self.frames += 1

    def end_episode(self, keep: bool) -> None:
        if keep and self.frames:
            self.dataset.save_episode()
            self.episodes += 1
        elif self.frames:
            self.dataset.clear_episode_buffer()
        self.frames = 0

    def finalize(self) -> None:
        self.dataset.finalize()


@dataclass
class TeleopConfig(draccus.ChoiceRegistry, ABC):
    @classmethod
    def default_choice_name(cls) -> str:
        return "sim_expert"

    @abstractmethod
    def make(self, robot: Robot):
        """A callable returning the teleoperator's current action [D] in the robot's action order."""


@TeleopConfig.register_subclass("sim_expert")
@dataclass
class SimExpertConfig(TeleopConfig):
    """Meta-World's scripted expert drives the simulated arm."""

    def make(self, robot: Robot):
        if not hasattr(robot, "env"):
            raise ValueError("teleop type sim_expert needs --robot.type sim")
        return lambda: robot.env.expert_action()


@TeleopConfig.register_subclass("lerobot")
@dataclass
class LeRobotTeleopConfig(TeleopConfig):
    """A LeRobot teleoperator (so101_leader, koch_leader, ...), its action dict read in the robot's action order."""

    device: str = "so101_leader"
    port: str = ""
    id: str = ""

    def make(self, robot: Robot):
        from lerobot.teleoperators.config import TeleoperatorConfig
        from lerobot.teleoperators.utils import make_teleoperator_from_config

        teleop = make_teleoperator_from_config(TeleoperatorConfig.get_choice_class(self.device)(
            port=self.port, id=self.id or None))
        teleop.connect()
        names = robot.spec.action_names

        def read() -> np.ndarray:
            action = teleop.get_action()
            missing = [n for n in names if n not in action]
            if missing:
                raise ValueError(f"teleoperator {self.device} gives {sorted(action)}; the robot needs {missing}")
            return np.array([action[n] for n in names], np.float32)

        return read


class TeleopPolicy:
    """A teleoperator behind the policy interface: one action per observation ([1, D] chunk)."""

    def __init__(self, read_action, spec: RobotSpec, cameras: list[str], image_size: int):
        self.read_action = read_action
        self.spec = PolicySpec.for_robot(spec, cameras, image_size, horizon=1)

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        return np.asarray(self.read_action(), np.float32)[None]


@dataclass
class RecordConfig:
    robot: RobotConfig = field(default_factory=lambda: RobotConfig.get_choice_class("sim")())
    cameras: list[CameraConfig] = field(default_factory=list)  # the simulator brings its own
    teleop: TeleopConfig = field(default_factory=SimExpertConfig)
    instruction: str = ""  # default: the simulated task's instruction
    episodes: int = 10
    max_steps: int = 300
    image_size: int = 96  # stored frames are centre-cropped and resized to this
    root: str = "outputs/recordings/demos"
    repo_id: str = "local/recorded"
    keep_failed: bool = False  # the simulator knows success: drop failed demos unless asked
    safety: SafetyConfig = field(default_factory=SafetyConfig)


def record(cfg: RecordConfig, estop: EStop | None = None) -> Path:
    """Record cfg.episodes episodes; returns the dataset folder (load it with vla.data / LeRobotDataset)."""
    estop = estop or EStop()
    with device_session(cfg.robot, cfg.cameras, estop) as session:
        robot, names = session.robot, sorted(session.cameras)
        recorder = EpisodeRecorder(cfg.root, cfg.repo_id, robot.spec, names, cfg.image_size, robot.spec.action_rate)
        session.on_exit.append(recorder.finalize)
        policy = TeleopPolicy(cfg.teleop.make(robot), robot.spec, names, cfg.image_size)
        loop_cfg = LoopConfig(max_steps=cfg.max_steps, async_inference=False, safety=cfg.safety,
                              schedule=ScheduleConfig("receding", execute_steps=1))
        instruction = cfg.instruction or getattr(robot, "instruction", "")
        loop = ControlLoop(robot, session.cameras, policy, loop_cfg, instruction, estop, recorder=recorder)
        session.on_exit.insert(0, loop.close)
        loop.start()
        while recorder.episodes < cfg.episodes and not estop.triggered:
            report = loop.run_episode()
            keep = report.stopped is None and (cfg.keep_failed or report.success is not False)
            recorder.end_episode(keep)
            log.info("episode: %d steps, success=%s, %s (%d/%d kept)", report.steps, report.success,
                     "kept" if keep else "dropped", recorder.episodes, cfg.episodes)
            if report.stopped:
                break
    return Path(cfg.root)


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = record(draccus.parse(RecordConfig, args=args))
    print(f"recorded to {path}")


if __name__ == "__main__":
    main()
