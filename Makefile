# turbo_ds: every dependency is installed by `make setup` into .venv (never by hand).
PY     := .venv/bin/python
PIP    := .venv/bin/pip
STAMP  := .venv/.installed

.PHONY: setup torchcodec test test-fast lint format demo demo-vlp demo-long demo-long-pretrain demo-sweep report-screenshot bench-model bench-data bench-data-web bench-index bench-train bench-vlp bench-frames bench-plan bench-align gpu-bundle gpu-check clean

setup: $(STAMP) torchcodec

# torch/torchvision first and pinned: they lie on this machine's disk; letting the resolver pick
# them alongside deepspeed could pull a multi-GB build from the registry.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip 'setuptools>=68' wheel
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

# The torchcodec decoder, where the machine's FFmpeg shared libraries are (it loads them; without them
# it cannot import): checked on every make, so installing FFmpeg later is picked up.
torchcodec: $(STAMP)
	@if ! (ldconfig -p 2>/dev/null || /sbin/ldconfig -p) | grep libavcodec >/dev/null; then \
	    echo "make setup: no FFmpeg shared libraries (libavcodec) here: torchcodec not installed (apt-get install ffmpeg, then make setup)"; \
	elif ! $(PY) -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torchcodec") is None)'; then \
	    $(PIP) install --quiet -e '.[torchcodec]'; \
	fi

test: setup
	$(PY) -m pytest -q tests

# The tests not marked slow (no multi-rank launches, no long runs): under 3 minutes, for the edit loop.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench-model: setup
	$(PY) scripts/bench_model.py --preset cpu --json docs/bench_model.json

# Longest clip per memory budget, dense vs Turbo (+ checkpointing), measured, planner beside each row.
bench-frames: setup
	$(PY) scripts/bench_frames.py --json docs/bench_frames.json --plot docs/bench_frames.png

# The memory planner against real DeepSpeed steps of configs it was not tuned on.
bench-plan: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	$(PY) scripts/bench_plan.py --json docs/bench_plan.json

# Peak memory of an HTM-Align evaluation against video length: chunked vs one forward per video.
bench-align: setup
	$(PY) scripts/bench_align_memory.py --json docs/bench_align_memory.json

bench-data: setup
	$(PY) scripts/bench_data.py --workers 2 --json docs/bench_data.json

# 5-minute web-like videos per decoder backend: caption clips (one by one / grouped), 64 and 256 frames.
bench-data-web: setup
	$(PY) scripts/bench_data.py --suite web --workers 2 --json docs/bench_data_web.json

# Index build/open at 20k, 60k, 120k HowTo100M-shaped videos (inputs in a temp folder; --preset small: ~1 min)
bench-index: setup
	$(PY) scripts/bench_index.py --json docs/bench_index.json

# A lent GPU machine has its own torch and nothing of ours: scripts/gpu_check.sh needs torch alone, plus
# PyYAML for reading configs (step d). No torchcodec wheel is bundled: they match one torch minor version
# (ours 0.14 for 2.14, that machine's torch is 2.11) and need FFmpeg's shared libraries, which it lacks;
# its decode step (f) measures NVDEC through PyNvVideoCodec instead. gpu-bundle puts PyYAML's pure-Python
# part (same version as .venv's; its C extension removed, so it works on any Python 3), PyNvVideoCodec's
# wheel and bench_nvdec's prepared videos (~50 MB in all) into the ignored .gpu_deps/, which the device
# run carries: run(command="bash scripts/gpu_check.sh", carry=[".gpu_deps"], timeout_s=540).
gpu-bundle: setup
	rm -rf .gpu_deps
	$(PIP) install --quiet --no-deps --no-compile --target .gpu_deps "pyyaml==$$($(PY) -c 'import yaml; print(yaml.__version__)')"
	rm -rf .gpu_deps/_yaml .gpu_deps/yaml/_yaml*.so .gpu_deps/bin
	# NVDEC for step f where torchcodec cannot load (the lent machine): PyNvVideoCodec's wheel for its
	# Python 3.12 and the videos + reference thumbnails scripts/bench_nvdec.py checks frames against.
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 -d .gpu_deps/wheels "pynvvideocodec==2.2.4"
	$(PY) scripts/bench_nvdec.py prepare .gpu_deps/nvdec
	echo "$$(git rev-parse HEAD) $$(git status --porcelain --untracked-files=no | wc -l) files modified" > .gpu_deps/COMMIT
	PYTHONPATH=.gpu_deps $(PY) -c 'import yaml; assert not yaml.__with_libyaml__; print("PyYAML", yaml.__version__, "(pure Python) in .gpu_deps/")'

# The GPU check here (results in gpu_check_out/); without a CUDA GPU it records the environment, skips
# the GPU steps and exits 0.
gpu-check: setup
	PYTHON=$(PY) bash scripts/gpu_check.sh

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# The newest file of the demo dataset: a demo_data/ without it is (re)generated (512 long videos since
# the long-video demo; generation is deterministic, so the other videos come out the same).
DEMO_STAMP := demo_data/videos/long/train/lon_train_00511.mp4

# The demo: generate the demo dataset (once), then train the Turbo classifier with 2 CPU ranks (gloo).
demo: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	.venv/bin/deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero2.json --config configs/demo_classification.yaml

# The video-language demo: Turbo (drop 0.75 + Partial-MAE) video tower against open_clip's text tower,
# MIL-NCE on the narrated demo videos; ends with retrieval R@1 and HTM-Align-protocol alignment.
demo-vlp: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	.venv/bin/deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero2.json --config configs/demo_video_text.yaml

# Long-video activity classification end to end (the activity is the ORDER of 4 motion sub-actions),
# in the paper's two steps: a short-clip model (here motion direction on the demo's 8-frame clips, the
# role Kinetics plays for Breakfast / COIN; made once) starts a long-video model trained end to end on
# 64 frames over each whole video, drop 0.75 + Partial-MAE, evaluated on 96 frames in 4 modes.
DEMO_LONG_PRETRAIN := runs/demo_long_pretrain/vit.safetensors
demo-long: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	test -f $(DEMO_LONG_PRETRAIN) || $(MAKE) demo-long-pretrain
	.venv/bin/deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero2.json --config configs/demo_long_video.yaml

demo-long-pretrain: setup
	.venv/bin/deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero2.json --config configs/demo_classification.yaml \
	    --set train.max_steps=300 --set train.eval_every=0 --set checkpoint.every_steps=0 --set data.test_split=null \
	    --set output_dir=runs/demo_long_pretrain --set tracking.experiment=demo_long_pretrain
	$(PY) scripts/export.py --checkpoint runs/demo_long_pretrain/checkpoints --out $(DEMO_LONG_PRETRAIN)

# Compare experiments: a drop-ratio sweep of the demo classifier (4 runs of 300 steps, 2 CPU ranks each,
# one MLflow experiment; rerunning skips finished runs) and its report (table, CSV, plots, report.html).
SWEEP_DIR := runs/sweeps/demo_drop_ratio
demo-sweep: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	$(PY) scripts/sweep.py --config configs/demo_classification.yaml --ds_config ds_configs/zero2.json --num_gpus 2 \
	    --grid token_dropout.drop_ratio=0,0.5,0.75,0.9 --set train.max_steps=300 --name demo_drop_ratio
	$(PY) scripts/compare.py --runs-dir $(SWEEP_DIR) --out $(SWEEP_DIR)/report

# What a browser shows of a report (needs Debian's chromium: apt-get install chromium): a full-page PNG.
REPORT ?= $(SWEEP_DIR)/report/report.html
report-screenshot:
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1800,3600 \
	    --screenshot=$(dir $(REPORT))screenshot.png file://$(abspath $(REPORT))

# Video-text: dense vs drop 0.5 vs drop 0.75 (+ Partial-MAE), quality against training time.
bench-vlp: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	$(PY) scripts/bench_vlp.py --config configs/demo_video_text.yaml --ds_config ds_configs/zero2.json --num_gpus 2 --json docs/bench_vlp.json --plot docs/bench_vlp.png

# Dense vs Turbo on the demo task (same steps); results appended to docs/benchmarks.md.
bench-train: setup
	test -f $(DEMO_STAMP) || $(PY) -m data_index demo --out demo_data
	$(PY) scripts/bench_train.py --config configs/demo_classification.yaml --ds_config ds_configs/zero2.json --num_gpus 2 --write-docs
