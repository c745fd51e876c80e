"""The quaternion / rotation helpers of geometry.py on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeldistill.geometry import (
    devkit_yaw,
    normalize_quaternion,
    quaternion_multiply,
    quaternion_to_matrix,
    quaternion_yaw,
    rotz,
    yaw_to_quaternion,
)


def test_product_of_yaws_adds_the_angles() -> None:
    q = quaternion_multiply(yaw_to_quaternion(0.3), yaw_to_quaternion(0.5))
    np.testing.assert_allclose(q, yaw_to_quaternion(0.8), atol=1e-15)
    np.testing.assert_allclose(quaternion_to_matrix(q), rotz(0.8), atol=1e-15)
    # i * j = k
    np.testing.assert_array_equal(quaternion_multiply([0, 1, 0, 0], [0, 0, 1, 0]), [0, 0, 0, 1])


def test_product_matches_matrix_product() -> None:
    a = normalize_quaternion([0.9, 0.1, -0.3, 0.2])
    b = normalize_quaternion([0.4, -0.5, 0.2, 0.7])
    np.testing.assert_allclose(
        quaternion_to_matrix(quaternion_multiply(a, b)),
        quaternion_to_matrix(a) @ quaternion_to_matrix(b),
        atol=1e-12,
    )


def test_normalize_and_yaws() -> None:
    assert np.linalg.norm(normalize_quaternion([2.0, 0.0, 0.0, 2.0])) == pytest.approx(1.0)
    q = 1.7 * yaw_to_quaternion(-2.5)  # not unit: both yaws normalise
    assert devkit_yaw(q) == pytest.approx(-2.5)
    assert quaternion_yaw(q) == pytest.approx(-2.5)
    np.testing.assert_allclose(rotz(math.pi / 2) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-15)
