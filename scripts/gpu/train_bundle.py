"""Train the bundled-model recipe on a GPU: patches of a study folder, then the `l1` phase for STEPS steps.

usage (repo root): python scripts/gpu/train_bundle.py OUTDIR STEPS [DEVICE]
Reads the study prepared by scripts/gpu/prepare.sh (.gpu/study: params.yaml + data/processed of the `real`
study), writes OUTDIR/bundle_gpu.pt and OUTDIR/bundle_gpu.json. Recipe (the bundled model v4's, see its model
card): the `real` study's `l1` (LR head, lr 2e-3, vessel-ridge 14, periodic-artifact 2) at F48 D6 with a residual
trunk, 256 crops per image; batch 64 here (8 on the 2-core CPU that trained v4). The previous recipe (LapSRN
F16 D3, v3) ran 53 steps/s on one H200; size STEPS so that the run ends inside the device call (a killed run
leaves only models/.resume/l1/last.pt in /tmp/gpu_study).
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from retina_sr.config import Params
from retina_sr.data.patches import run_patches
from retina_sr.training.trainer import train_phase

out, steps = Path(sys.argv[1]).resolve(), int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
smoke = os.environ.get("SMOKE") == "1"
root = Path("/tmp/gpu_study")
shutil.rmtree(root, ignore_errors=True)
shutil.copytree(Path(".gpu/study").resolve(), root)
os.chdir(root)
raw = yaml.safe_load(Path("params.yaml").read_text())
raw["data"]["workers"] = os.cpu_count() or 2
raw["data"]["patches"]["per_image"] = 8 if smoke else 256
raw["model"].update(arch="lrhead", features=48, depth=6, block="residual")  # v4: the real study's resblock variant, wider
every = max(50, steps // 8)
raw["train"]["loop"].update(device=device, batch_size=8 if smoke else 64, val_every=every, checkpoint_every=every,
                            log_every=200)
raw["train"]["l1"].update(steps=steps)  # lr and loss weights: the real study's
params = Params.model_validate(raw)
t = time.time()
log = {"patches": run_patches(params.data, params.seed), "patches_s": round(time.time() - t, 1), "device": device,
       "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
print(json.dumps(log), flush=True)
t = time.time()
res = train_phase(params, "l1", root=".", track=False, progress=False)
log.update(steps=steps, train_s=round(time.time() - t, 1), steps_per_s=res.steps_per_s, val_psnr=res.val_psnr,
           params_digest=params.digest(), params=params.model_dump(mode="json"))
shutil.copy("models/l1/model.pt", out / "bundle_gpu.pt")
(out / "bundle_gpu.json").write_text(json.dumps(log, indent=1, default=str))
print(json.dumps({k: v for k, v in log.items() if k != "params"}, default=str), flush=True)
