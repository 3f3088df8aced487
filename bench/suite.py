"""The registered benchmarks: `python -m bench NAME [args]` runs one and writes
bench/results/NAME.md (bench/harness.py). Arguments after the name replace the defaults given
here, which are the arguments of the recorded run; shell benchmarks take VAR=value settings.
Each takes minutes to hours and its timings want an otherwise idle machine.
"""
from __future__ import annotations

from bench.harness import REGISTRY, Benchmark, shell

DEMO_TRAIN = ("--train-args=--nominal-batch 16 --lr0 0.02 --cls 128 --scale 0.25 --warmup-epochs 1 "
              "--mosaic 1.0 --ema-tau 100 --eval-interval 5")  # the demo's flags of the recorded runs
STAGE = ("--run", "runs/demo", "--data", "data/shapes/shapes.data", "--epochs", "4", "--img-size", "256")

for b in [
    Benchmark("fast", "Fast by construction: the demo recipe and its controls (issue 27)",
              "the demo's 3x recipe vs the FLOPs recipe, the older tools and the slim cfg from "
              "scratch, per seed, all timed interleaved (fast_bench.sh; BASE=, SEEDS=)",
              shell("env {args} bash bench/fast_bench.sh", reads="bench/results/fast.md")),
    Benchmark("prox", "Prox sparse training and the free cut (issue 13)",
              "prox vs subgradient sparse training and the dense control at 25% FLOPs, demo "
              "budget (prox_bench.sh variants, then prox_table.py; SEED=, OUT=)",
              shell("bash bench/prox_bench.sh {args} >&2 && {py} bench/prox_table.py --out ${OUT:-runs/prox}",
                    defaults=("control", "flops", "uniform", "subgrad"))),
    Benchmark("trees", "Tree crowns: the new recipe vs the older tools (issue 26)",
              "real labels: the transferred yolov3-tiny slimmed by make slim vs the older tools, "
              "per target and seed (trees_bench.sh; SEEDS=, TARGETS=)",
              shell("env OUT_MD={out} {args} bash bench/trees_bench.sh >&2")),
    Benchmark("epoch_speed", "CPU training speed: bf16, channels-last, loader processes",
              "one demo training epoch: an older commit vs this one's bf16 / fp32 / loader settings",
              shell("bash bench/epoch_speed.sh {args}", defaults=("d51190c", "1"), code=True)),
    Benchmark("training", "Baseline training (issue: training engine)",
              "training-step throughput of a cfg (throughput ...) or a full baseline run (train -- ...)",
              shell("{py} bench/train_bench.py {args}", code=True, defaults=(
                  "throughput", "--cfg", "cfg/demo.cfg", "--data", "data/shapes/shapes.data", "--steps", "6"))),
    Benchmark("sparsity", "Sparse training schedules",
              "no --sr vs constant / global-decay / local-decay sparsity from the demo's baseline",
              shell("{py} bench/stage_bench.py sparsity {args} --out {out}",
                    defaults=(*STAGE, "--s", "0.04", DEMO_TRAIN))),
    Benchmark("distill", "Fine-tuning with distillation",
              "the demo's pruned model fine-tuned with --kd none / hinton / chen, same epochs",
              shell("{py} bench/stage_bench.py distill {args} --out {out}", defaults=(*STAGE, DEMO_TRAIN))),
    Benchmark("prune", "Channel pruning",
              "prune_channels' wall time and the params/FLOPs kept per strategy and percent "
              "(yolov3-spp, random weights)",
              shell("{py} bench/prune_bench.py {args}", defaults=("--img-size", "416", "--threads", "2"))),
    Benchmark("prune_speed", "Verified channel-pruning speed (issue 11)",
              "CPU and wall seconds of one verified prune of yolov3-spp at 608 (--baseline-src: vs "
              "an older checkout)",
              shell("{py} bench/prune_speed.py {args}")),
    Benchmark("layer_prune", "Layer pruning",
              "depth, params, FLOPs and torch latency after removing 0/8/12/16 residual blocks, "
              "with and without a channel cut (yolov3, random weights)",
              shell("{py} bench/layer_prune_bench.py {args}",
                    defaults=("--cfg", "cfg/yolov3.cfg", "--img-size", "416", "--threads", "2", "--runs", "5"))),
    Benchmark("latency", "ONNX / PyTorch CPU latency",
              "torch and onnxruntime latency of an original and a pruned model per input size and batch",
              shell("{py} bench/latency.py {args} --out {out}", defaults=(
                  "--cfg", "cfg/demo.cfg", "--weights", "runs/demo/baseline/best.pt",
                  "--pruned-cfg", "runs/demo/finetune/demo.cfg", "--pruned-weights",
                  "runs/demo/finetune/demo.weights", "--sizes", "320", "416", "608",
                  "--batches", "1", "4", "8", "--runs", "5", "--warmup", "2"))),
    Benchmark("latency_prune", "Latency-aware pruning (issue 14): `--target-latency` / `--target-speedup`",
              "the |γ| FLOPs cut vs the latency-aware cut at the same measured speed-up, timed interleaved",
              shell("{py} bench/latency_prune_bench.py {args} --out {out}", defaults=(
                  "--cfg", "cfg/yolov3-tiny.cfg", "--img-size", "416", "--target-flops", "0.3",
                  "--rounds", "40"))),
    Benchmark("quantize", "INT8 quantization: the demo's models as FP32 and INT8 ONNX",
              "mAP, file size and interleaved onnxruntime latency of the baseline and the pruned "
              "model, FP32 and INT8 (also writes quantize.json)",
              shell("{py} bench/quant_bench.py {args} --out bench/results/quantize.md",
                    reads="bench/results/quantize.md", defaults=(
                        "--run", "runs/demo", "--data", "data/shapes/shapes.data", "--img-size", "256",
                        "--calib-images", "100", "--calib-method", "minmax", "--batches", "1", "8",
                        "--rounds", "40"))),
    Benchmark("beyond", "Importance criteria, sensitivity, iterative and unstructured pruning",
              "bn / l1 / rank / sensitivity / iterative cuts at 50% FLOPs, same fine-tuning, vs the "
              "dense control; unstructured vs structured latency",
              shell("{py} bench/beyond_bench.py {args} --out {out}", defaults=(
                  "--work", "runs/beyond", "--data", "data/shapes/shapes.data", "--baseline",
                  "runs/beyond/baseline", "--sparse", "runs/beyond/sparse", "--img-size", "256"))),
    Benchmark("darknet_reads_slim", "Real darknet reads every slimmed file",
              "pjreddie darknet's detections vs the project's on each slimmed cfg/weights pair",
              shell("{py} bench/darknet_reads_slim.py {args} --out {out}",
                    usage="runs/real/pruned/yolov3-tiny.cfg runs/real/pruned/yolov3-tiny.weights")),
    Benchmark("real_agreement", "Agreement of slimmed models with the original",
              "agreement with the original model's detections on held-out frames and on real photos",
              shell("{py} bench/real_agreement.py {args} --out {out}",
                    usage="--reference-cfg C/yolov3-tiny.cfg --reference C/yolov3-tiny.weights "
                          "--models runs/real/finetune")),
    Benchmark("op_profile", "onnxruntime CPU time per operator type",
              "onnxruntime's own profiler: ms per run per op type of each ONNX file",
              shell("{py} bench/ort_op_profile.py {args}", usage="baseline.onnx slim.onnx --runs 50")),
    Benchmark("runtimes_demo", "Runtimes (issue 29): the demo's files on onnxruntime, OpenVINO and ncnn",
              "the demo's baseline and slim model exported to every runtime, FP32 and INT8, scored by "
              "evaluate.py and timed interleaved at batch 1 and 8",
              shell("{py} bench/runtimes_bench.py {args} --out {out}", defaults=(
                  "--model", "baseline::runs/fast/ours-s0/baseline/best.pt", "--model",
                  "slim:runs/fast/ours-s0/finetune/demo.cfg:runs/fast/ours-s0/finetune/demo.weights",
                  "--img-size", "256", "--data", "data/shapes/shapes.data", "--calib-data",
                  "data/shapes/shapes.data", "--batches", "1", "8", "--rounds", "30",
                  "--work", "runs/runtimes-demo"))),
    Benchmark("runtimes_real", "Runtimes (issue 29): the real yolov3-tiny's files on every runtime",
              "COCO yolov3-tiny and its 2x slim model (make real) on every runtime, FP32 and INT8, "
              "agreement with the torch model on the street video's held-out frames, timed interleaved",
              shell("{py} bench/runtimes_bench.py {args} --out {out}",
                    usage="--model base:C/yolov3-tiny.cfg:C/yolov3-tiny.weights --model "
                          "slim:runs/real27/finetune/yolov3-tiny.cfg:runs/real27/finetune/yolov3-tiny.weights "
                          "--img-size 416 --data V/vtest.data --calib-data V/vtest.data --agreement "
                          "--work runs/runtimes-real")),
    Benchmark("runtimes_cross", "Runtimes (issue 29): a cut for runtime A timed on A and on B",
              "prune_channels --target-speedup X --runtime R for each runtime, every cut timed on "
              "every runtime against the uncut model",
              shell("{py} bench/runtimes_cross.py {args} --out {out}",
                    usage="--cfg C/yolov3-tiny.cfg --weights C/yolov3-tiny.weights --img-size 416 "
                          "--target-speedup 2 --work runs/cross")),
]:
    REGISTRY.add(b)
