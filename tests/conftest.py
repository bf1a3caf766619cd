import os

# Two cores are shared by the test process and whatever else runs; one intra-op
# thread avoids oversubscription stalls in torch's CPU kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
