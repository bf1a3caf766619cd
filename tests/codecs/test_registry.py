import pytest
import torch

from pvq.codecs import CODECS, CodecError, codec_from_config, codec_to_config, make_codec, quantize_grouped

SETTINGS = [("uniform", 3, 1), ("nf4", 4, 1), ("lloydmax", 2, 1), ("kmeans", 2, 4), ("pvq", 3, 32), ("e8", 2, 8),
            ("lattice", 3, 8), ("trellis", 2, 32), ("aqlm", 2, 8), ("gptvq", 2, 2), ("vptq", 2, 6), ("ecsq", 3, 1)]  # fmt: skip


@pytest.mark.parametrize("name,bits,dim", SETTINGS)
def test_config_round_trip_rebuilds_the_same_codec(name, bits, dim):
    codec = make_codec(name, bits, dim)
    again = codec_from_config(codec_to_config(codec))
    assert type(again) is type(codec) and codec_to_config(again) == codec_to_config(codec)
    x = torch.randn(codec.group_size * 8, dim, generator=torch.Generator().manual_seed(0))
    a, b = quantize_grouped(codec, x), quantize_grouped(again, x)
    assert torch.equal(a.xhat, b.xhat)
    assert {k: v.tolist() for k, v in a.stored.tensors.items()} == {k: v.tolist() for k, v in b.stored.tensors.items()}


def test_every_registered_codec_is_covered():
    assert {s[0] for s in SETTINGS} == set(CODECS)


def test_unknown_names_fail_with_the_known_list():
    with pytest.raises(CodecError, match="choose one of"):
        make_codec("pqv", 2.0)
    with pytest.raises(CodecError, match="known"):
        codec_from_config({"name": "nope"})
