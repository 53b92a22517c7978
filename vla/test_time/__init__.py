"""Test-time scaling (RoboMonkey, METHODS.md section 10): n samples per observation from one backbone pass, their
Gaussian expansion, a learned action verifier, and SampleAndVerify, which executes the verifier's best candidate."""

from vla.test_time.sample_and_verify import SampleAndVerify, with_test_time
from vla.test_time.sampling import Candidates, gaussian_expand, gripper_rule, sample_candidates
from vla.test_time.verifier import Verifier, VerifierConfig, observation_features

__all__ = ["Candidates", "SampleAndVerify", "Verifier", "VerifierConfig", "gaussian_expand", "gripper_rule",
           "observation_features", "sample_candidates", "with_test_time"]
