import pytest
import torch

from pvq.errors import PvqError
from pvq.transforms.rotation import LayerRotation


@pytest.mark.parametrize("n", [96, 448, 1792])  # 3 x 2^5, 7 x 2^6, 7 x 2^8: dense factors and the radix-64 FWHT
@pytest.mark.parametrize("rows", [7, 64, 5000])
def test_chunked_hessian_rotation_is_the_whole_matrix_form_bit_for_bit(n, rows):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n, n, generator=g, dtype=torch.float64)
    h = x.T @ x
    rot = LayerRotation(8, n, 1, 5)
    whole = rot.v.forward(rot.v.forward(h).T.contiguous()).T.contiguous()  # (V (H V^T)^T)^T, all at once
    assert torch.equal(rot.rotate_hessian(h, rows_per_chunk=rows), whole)
    dense = rot.v.matrix()
    torch.testing.assert_close(whole, dense @ h @ dense.T, rtol=1e-10, atol=1e-9)


def test_rows_per_chunk_is_checked():
    with pytest.raises(PvqError, match="rows_per_chunk"):
        LayerRotation(8, 96, 1, 5).rotate_hessian(torch.eye(96, dtype=torch.float64), rows_per_chunk=0)
