import pytest
import torch

from model.network import NetworkConfig, ProjectionHead, ResidualUNet, SATsNetwork, count_parameters, plan_strides

TINY = NetworkConfig(base_features=4, max_features=8, encoder_blocks=(1, 1, 1, 1, 1))


def test_default_parameter_count_near_published():
    parameters = count_parameters(ResidualUNet(NetworkConfig()))
    assert 30.0e6 < parameters < 31.5e6  # published: about 30.7 M


def test_default_features_double_up_to_cap():
    assert NetworkConfig().features == [32, 64, 128, 256, 320]


def test_unet_output_shape_matches_input():
    network = ResidualUNet(TINY)
    logits = network(torch.zeros(2, 1, 16, 32, 32))
    assert logits.shape == (2, 1, 16, 32, 32)


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="multiple of"):
        ResidualUNet(TINY)(torch.zeros(1, 1, 15, 32, 32))


def test_anisotropic_strides_keep_coarse_axis():
    strides = plan_strides((3.0, 0.8, 0.8))
    assert strides[0] == (1, 2, 2)  # 3 mm > 2 x 0.8 mm
    assert strides[1] == (2, 2, 2)  # 3 mm <= 2 x 1.6 mm
    assert strides[2] == (2, 2, 2)
    assert strides[3] == (2, 2, 2)


def test_isotropic_strides_all_two():
    assert plan_strides((1.0, 1.0, 1.0)) == ((2, 2, 2),) * 4


def test_anisotropic_network_runs():
    config = NetworkConfig(
        base_features=4, max_features=8, strides=plan_strides((3.0, 0.8, 0.8)), encoder_blocks=(1, 1, 1, 1, 1)
    )
    assert config.divisor == (8, 16, 16)
    assert ResidualUNet(config)(torch.zeros(1, 1, 8, 32, 32)).shape == (1, 1, 8, 32, 32)


def test_projection_head_unit_norm():
    head = ProjectionHead(in_channels=8, channels=16)
    embedding = head(torch.randn(2, 8, 4, 5, 6))
    assert embedding.shape == (2, 16, 4, 5, 6)
    norms = torch.linalg.vector_norm(embedding, dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_projection_head_layers():
    convs = [m for m in ProjectionHead(8).modules() if isinstance(m, torch.nn.Conv3d)]
    relus = [m for m in ProjectionHead(8).modules() if isinstance(m, torch.nn.ReLU)]
    assert [c.kernel_size for c in convs] == [(1, 1, 1)] * 3
    assert [c.out_channels for c in convs] == [16, 16, 16]
    assert len(relus) == 2


def test_config_round_trip():
    config = NetworkConfig(strides=plan_strides((3.0, 0.8, 0.8)))
    assert NetworkConfig.from_dict(config.to_dict()) == config


def test_siamese_symmetric_input_gives_equal_embeddings():
    torch.manual_seed(0)
    network = SATsNetwork(TINY, embedding="head").eval()
    half = torch.randn(1, 1, 32, 32, 16)
    volume = torch.cat([half, torch.flip(half, dims=(-1,))], dim=-1)  # mirror-symmetric along W
    output = network.siamese(volume, torch.flip(volume, dims=(-1,)))
    assert torch.allclose(output.embedding, output.embedding_flipped)
    assert torch.allclose(output.logits, output.logits_flipped)


def test_siamese_flipped_branch_is_network_on_mirror_image():
    """Index v of the primed outputs is the shared network applied to the mirror image."""
    torch.manual_seed(0)
    network = SATsNetwork(TINY, embedding="head").eval()
    volume = torch.zeros(1, 1, 32, 32, 32)
    volume[..., 14:18, 14:18, 4:8] = 5.0  # blob in columns 4..7; its mirror columns are 24..27
    mirrored = torch.flip(volume, dims=(-1,))
    output = network.siamese(volume, mirrored)
    logits, features = network.unet.forward_features(mirrored)
    assert torch.allclose(output.logits_flipped, logits, atol=1e-5)
    assert torch.allclose(output.embedding_flipped, network.head(features), atol=1e-5)
    unflipped_logits, _ = network.unet.forward_features(volume)
    assert torch.allclose(output.logits, unflipped_logits, atol=1e-5)


def test_siamese_features_mode_unit_norm():
    network = SATsNetwork(TINY, embedding="features")
    output = network.siamese(torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32))
    assert output.embedding is not None
    norms = torch.linalg.vector_norm(output.embedding, dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_siamese_none_mode_has_no_embedding():
    output = SATsNetwork(TINY, embedding="none").siamese(torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32))
    assert output.embedding is None


def test_unknown_embedding_rejected():
    with pytest.raises(ValueError, match="'projection'"):
        SATsNetwork(TINY, embedding="projection")


def test_auxiliary_output_per_branch():
    torch.manual_seed(0)
    network = SATsNetwork(TINY, embedding="head", auxiliary_output=True).eval()
    volume = torch.randn(1, 1, 16, 32, 32)
    mirrored = torch.flip(volume, dims=(-1,))
    output = network.siamese(volume, mirrored)
    assert network.auxiliary is not None
    _, features = network.unet.forward_features(mirrored)
    assert output.auxiliary_logits is not None
    assert output.auxiliary_logits.shape == (1, 1, 16, 32, 32)
    assert torch.allclose(output.auxiliary_logits_flipped, network.auxiliary(features), atol=1e-5)
    single = network.segment(volume)
    assert torch.allclose(single.logits, output.logits, atol=1e-5)
    assert single.auxiliary_logits is not None
    assert torch.allclose(single.auxiliary_logits, output.auxiliary_logits, atol=1e-5)


def test_auxiliary_output_not_in_unet():
    zeros = torch.zeros(1, 1, 16, 32, 32)
    network = SATsNetwork(TINY, embedding="none", auxiliary_output=True)
    assert not any(name.startswith("auxiliary") for name in network.unet.state_dict())
    assert "auxiliary.weight" in network.state_dict()
    assert network.segment(zeros).auxiliary_logits is not None
    assert SATsNetwork(TINY).segment(zeros).auxiliary_logits is None
    assert SATsNetwork(TINY).siamese(zeros, zeros).auxiliary_logits is None


def test_deep_outputs_on_middle_stages():
    torch.manual_seed(0)
    config = NetworkConfig(base_features=4, max_features=16, strides=((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)))
    network = SATsNetwork(config, embedding="head", deep_supervision=True).eval()
    # Decoder stages, deepest first, work at 1/(4,8,8), 1/(2,4,4), 1/(1,2,2) and full
    # resolution. The outputs are on the two in between, finest first.
    assert network.unet.decoder_scales() == [(4, 8, 8), (2, 4, 4), (1, 2, 2), (1, 1, 1)]
    assert network.deep_scales == [(1, 2, 2), (2, 4, 4)]
    volume = torch.randn(1, 1, 16, 32, 32)
    single = network.segment(volume)
    assert [tuple(level.shape) for level in single.deep_logits] == [(1, 1, 16, 16, 16), (1, 1, 8, 8, 8)]
    assert torch.allclose(single.logits, network(volume), atol=1e-5)
    mirrored = torch.flip(volume, dims=(-1,))
    pair = network.siamese(volume, mirrored)
    for level, alone in zip(pair.deep_logits, single.deep_logits, strict=True):
        assert torch.allclose(level, alone, atol=1e-5)
    for level, alone in zip(pair.deep_logits_flipped, network.segment(mirrored).deep_logits, strict=True):
        assert torch.allclose(level, alone, atol=1e-5)
    # The saved encoder-decoder is the same with or without the training-only outputs.
    assert set(network.unet.state_dict()) == set(SATsNetwork(config).unet.state_dict())
    assert any(name.startswith("deep_outputs") for name in network.state_dict())


def test_deep_outputs_off_by_default():
    zeros = torch.zeros(1, 1, 16, 32, 32)
    network = SATsNetwork(TINY)
    assert network.deep_scales == []
    assert network.segment(zeros).deep_logits == []
    assert network.siamese(zeros, zeros).deep_logits_flipped == []
