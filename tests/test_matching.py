import math

import torch

from ddbackdoor.distill.matching import layer_distance, match_distance


def test_identical_gradients_have_zero_distance():
    g = torch.randn(4, 3, 3, 3)
    assert abs(float(layer_distance(g, g))) < 1e-5


def test_hand_computed_rows():
    real = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    syn = torch.tensor([[0.0, 1.0], [-1.0, -1.0]])
    # row 0: orthogonal -> 1 - 0 = 1; row 1: opposite -> 1 - (-1) = 2
    assert math.isclose(float(layer_distance(syn, real)), 3.0, rel_tol=1e-5)


def test_conv_kernels_flatten_per_output_channel():
    real = torch.zeros(2, 1, 2, 2)
    real[0, 0, 0, 0] = 1.0
    real[1, 0, 1, 1] = 2.0
    syn = real.clone()
    syn[1] = -syn[1]
    assert math.isclose(float(layer_distance(syn, real)), 2.0, rel_tol=1e-5)


def test_one_dimensional_tensors_contribute_nothing_and_layers_sum():
    bias_real, bias_syn = torch.ones(5), -torch.ones(5)
    w_real = torch.tensor([[1.0, 0.0]])
    w_syn = torch.tensor([[0.0, 2.0]])
    total = match_distance([w_syn, bias_syn], [w_real, bias_real])
    assert math.isclose(float(total), 1.0, rel_tol=1e-5)


def test_epsilon_keeps_zero_gradients_finite():
    assert math.isclose(float(layer_distance(torch.zeros(3, 2), torch.zeros(3, 2))), 3.0)
