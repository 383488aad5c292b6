"""Where torchvision's GPU inference time goes: whole call vs transform.postprocess (mask pasting).

Run on a CUDA machine: python docs/gpu/torchvision_postprocess_time.py (output: run2_diag.txt)."""
import statistics, time, torch
from bench import model_speed as ms

state = ms.reference_state(trained_like_size=800, device="cuda")
model = ms._build("torchvision", 800, state)[0].cuda().eval()
images = [im.cuda() for im in ms.make_batch(800, batch=8)[0]]
post = model.transform.postprocess
spent = []
def timed(*a, **k):
    torch.cuda.synchronize(); t = time.perf_counter(); r = post(*a, **k); torch.cuda.synchronize()
    spent.append(time.perf_counter() - t); return r
model.transform.postprocess = timed
for amp in ("bf16", None):
    total = []
    spent.clear()
    for i in range(6):
        with torch.no_grad(), ms._autocast("cuda", amp):
            torch.cuda.synchronize(); t = time.perf_counter(); out = model(images); torch.cuda.synchronize()
        total.append(time.perf_counter() - t)
    n = [len(o["boxes"]) for o in out]
    print(f"torchvision eval batch 8 amp={amp}: total {statistics.median(total[1:]):.4f} s, "
          f"transform.postprocess {statistics.median(spent[1:]):.4f} s, detections/image {n}", flush=True)
