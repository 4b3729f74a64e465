"""The cluster configs in infra/, read as `ray up`, KubeRay, `ray job submit` and `docker build` would read them: Ray's
own autoscaler schema, the entrypoint's script, config file and keys, the run's placement plan against the declared
GPUs, /dev/shm in memory, shutdown after the job, the packages each node installs, the shared storage every node
mounts and the image the RayJob runs. (Parsed here; not run on a cluster, not built.)"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from rl.config_loading import load_config
from rl.runtime.placement import plan_placement, uses_rollouts

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
GPUS_OF = {"p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8}  # 8 x A100, 8 x A100 80 GB, 8 x H100
SHARED = "/mnt/pointrl"  # the shared storage, at one path on every node
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def run_config(command: str):
    """The Config an entrypoint `python rl/train_*.py --config FILE key=value ...` runs, after checking that the
    script and the config file are in the repository."""
    words = shlex.split(command)
    assert words[0] == "python" and (ROOT / words[1]).is_file(), words[:2]
    assert words[2] == "--config" and (ROOT / words[3]).is_file(), words[2:4]
    return load_config(ROOT / words[3], words[4:])


@pytest.fixture(scope="module")
def cluster_yaml():
    return load("cluster.yaml")


def test_the_ray_up_config_passes_rays_autoscaler_schema(cluster_yaml):
    import jsonschema

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster_yaml, schema)
    assert cluster_yaml["head_node_type"] in cluster_yaml["available_node_types"]


def test_the_ray_up_cluster_has_a100_and_h100_workers_that_declare_their_gpus(cluster_yaml):
    types = cluster_yaml["available_node_types"]
    head = types[cluster_yaml["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != cluster_yaml["head_node_type"]}
    instances = {t["node_config"]["InstanceType"] for t in workers.values()}
    assert {"p4d.24xlarge", "p5.48xlarge"} <= instances  # A100 and H100
    for t in workers.values():
        assert t["resources"]["GPU"] == GPUS_OF[t["node_config"]["InstanceType"]]
        assert t["min_workers"] <= t["max_workers"] <= cluster_yaml["max_workers"]
    assert sum(t["min_workers"] for t in workers.values()) >= 1  # GPUs are there once `ray up` returns
    # Ray in the image is the Ray the project is tested with
    assert cluster_yaml["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311-gpu")


def test_every_node_installs_the_project_with_its_gpu_extra_and_the_torch_pin(cluster_yaml):
    setup = " && ".join(cluster_yaml["setup_commands"])
    assert "torch==2.13.0" in setup and "pointrl[gpu]" in setup
    pinned = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch")]
    assert pinned == ["torch==2.13.0"]  # the pin the setup commands repeat
    mount, source = next(iter(cluster_yaml["file_mounts"].items()))
    assert source == "." and f"-e '{mount}[gpu]'" in setup  # this checkout, installed where it is mounted
    head = " ".join(cluster_yaml["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head and "--metrics-export-port" in head


@pytest.fixture(scope="module")
def rayjob():
    return load("rayjob.yaml")


def pod_specs(job: dict) -> list[dict]:
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_the_rayjob_runs_train_grca_with_a_config_that_loads(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    cfg = run_config(rayjob["spec"]["entrypoint"])  # unknown keys or bad values would raise here
    assert rayjob["spec"]["entrypoint"].split()[1] == "rl/train_grca.py" and cfg.algo.name == "grca"
    assert cfg.learner.use_gpu and cfg.run.dir.startswith("/mnt/pointrl")  # on the volume every node mounts
    runtime = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime["working_dir"].endswith("/pointrl")


def test_the_rayjob_worker_group_holds_the_runs_placement_plan(rayjob):
    cfg = run_config(rayjob["spec"]["entrypoint"])
    nodes = []
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]  # Kubernetes allots GPUs only whole
        gpus = int(limits["nvidia.com/gpu"])
        assert int(group["rayStartParams"].get("num-gpus", gpus)) == gpus
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        nodes += [{"CPU": float(limits["cpu"]), "GPU": gpus}] * group["replicas"]
    plan = plan_placement(cfg, nodes, uses_rollouts(cfg))  # raises when the GPUs or CPUs do not suffice
    assert plan.total("GPU") == sum(n["GPU"] for n in nodes)  # and it uses every GPU it asks for


def test_the_rayjob_puts_dev_shm_in_memory_and_ends_with_its_job(rayjob):
    for pod in pod_specs(rayjob):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    images = {c["image"] for pod in pod_specs(rayjob) for c in pod["containers"]}
    assert len(images) == 1  # the submitter, the head and the workers run one build


def test_the_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == "." and "pip" not in env  # code travels; packages are already on the nodes
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_the_readme_walks_from_ray_up_to_the_dashboard():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## On a GPU cluster") :]
    section = section[: section.index("\n## ", 1)]
    for step in (
        "ray up infra/cluster.yaml",
        "ray job submit",
        "--runtime-env infra/runtime_env.yaml",
        "python rl/train_grca.py",
        "8265",
        "kubectl apply -f infra/rayjob.yaml",
        "not run on a cluster",
    ):
        assert step in section, step


def readme_commands(heading: str = "## On a GPU cluster") -> list[list[str]]:
    """The commands of the first bash block of a README section, each as the words a shell would pass: `\\`
    continuation lines joined, comments dropped (variables such as `$PWD` stay as written)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    block = section[section.index("```bash\n") + len("```bash\n") :]
    commands, pending = [], ""
    for line in block[: block.index("```")].splitlines():
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if words := shlex.split(pending, comments=True):
            commands.append(words)
        pending = ""
    return commands


def test_the_readmes_first_job_starts_its_head_from_the_venv_and_fits_two_cpus():
    from rl.config_loading import parse_cli

    commands = readme_commands()
    start = commands.index(["ray", "start", "--head"])
    # a job's entrypoint runs with the PATH of the shell that started the head (tests/test_first_job.py runs it)
    assert ["source", ".venv/bin/activate"] in commands[:start] and ["export", "RAY_AUTH_MODE=token"] in commands
    submit = next(c for c in commands[start:] if c[:3] == ["ray", "job", "submit"])
    assert submit[3:6] == ["--working-dir", ".", "--"] and commands[-1] == ["ray", "stop"]
    entrypoint = submit[submit.index("--") + 1 :]
    assert entrypoint[:2] == ["python", "rl/train_grca.py"]
    cfg = parse_cli(entrypoint[2:], "grca.yaml")
    assert cfg.run.steps <= 2 and cfg.sft.steps <= 20  # a first job of a minute or two
    plan = plan_placement(cfg, {"CPU": 2}, uses_rollouts(cfg))  # a laptop-sized head (`ray start --head` on 2 cores)
    assert plan.total("CPU") + cfg.reward.replicas * cfg.reward.cpus_per_replica <= 2  # the reward replica too


def commented_command(path: Path, start: str) -> list[str]:
    """The words of the command that a comment line of `path` begins with `start`, with its `\\` continuation lines:
    the commands the files document, parsed as a shell would."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next(i for i in range(first, len(lines)) if not lines[i].endswith("\\"))
    return shlex.split(" ".join(lines[first : last + 1]).replace("\\ ", " "))


def test_every_node_mounts_the_shared_storage_where_the_jobs_keep_their_paths(cluster_yaml, rayjob):
    region, docker = cluster_yaml["provider"]["region"], cluster_yaml["docker"]
    for name, node_type in cluster_yaml["available_node_types"].items():
        # on the host, before the container: a node type's own list would replace the global one
        init = node_type.get("initialization_commands", cluster_yaml["initialization_commands"])
        mount = shlex.split(next(c for c in init if "mount -t nfs4" in c).split("||")[-1])
        source, target = mount[-2:]
        assert target == SHARED, name
        assert re.fullmatch(rf"(EFS_FILE_SYSTEM_ID|fs-[0-9a-f]+)\.efs\.{region}\.amazonaws\.com:/", source), source
        # into the container at the same path: Ray merges the global run options with the head's or the workers'
        own = docker.get("head_run_options" if name == cluster_yaml["head_node_type"] else "worker_run_options", [])
        options = docker["run_options"] + own + node_type.get("docker", {}).get("worker_run_options", [])
        assert f"--volume {SHARED}:{SHARED}" in options, name
    submit = commented_command(INFRA / "cluster.yaml", "RAY_AUTH_MODE=token ray job submit")
    assert submit[submit.index("--runtime-env") + 1] == "infra/runtime_env.yaml"
    for command in (" ".join(submit[submit.index("--") + 1 :]), rayjob["spec"]["entrypoint"]):
        cfg = run_config(command)
        for path in (cfg.run.dir, cfg.policy.init, cfg.data.dir):
            assert path.startswith(f"{SHARED}/"), (command, path)
    for pod in pod_specs(rayjob):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "persistentVolumeClaim" in volumes[mounts[SHARED]]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction of a Dockerfile, strictly: comment lines and blank lines
    dropped, `\\` continuations joined; an unknown or lower-case instruction or a heredoc fails the test."""
    keywords = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER"}
    keywords |= {"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        assert keyword in keywords and "<<" not in arguments, pending
        instructions.append((keyword, arguments.strip()))
        pending = ""
    assert not pending, f"{path}: ends inside a continued line"
    return instructions


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The arguments of each `pip install` in shell commands, options without a value (--quiet) dropped."""
    installs = []
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                installs.append([w for w in words[2:] if w == "-e" or not w.startswith("-")])
    return installs


def test_the_dockerfile_builds_the_cluster_image_with_the_checkout_installed_as_the_cluster_installs_it(cluster_yaml):
    instructions = dockerfile_instructions(INFRA / "Dockerfile")
    assert [args for keyword, args in instructions if keyword == "FROM"] == [cluster_yaml["docker"]["image"]]
    assert instructions[0][0] == "FROM"
    checkout = next(iter(cluster_yaml["file_mounts"]))
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert "--from" not in args and all((ROOT / src).exists() for src in words[:-1]), args
            assert words == [".", checkout]  # the checkout, where cluster.yaml mounts it
    # torch pinned first, then the project with its gpu extra: the install of cluster.yaml's setup_commands
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert pip_installs(runs) == pip_installs(cluster_yaml["setup_commands"])
    assert pip_installs(runs) == [["torch==2.13.0"], ["-e", f"{checkout}[gpu]"]]
    # what never travels to the nodes stays out of the build context too
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip().removeprefix("**/") for line in lines if not line.startswith("#")}
    assert set(cluster_yaml["rsync_exclude"]) <= ignored


def test_the_rayjob_runs_the_image_its_documented_build_command_tags(rayjob):
    build = commented_command(INFRA / "rayjob.yaml", "docker build")
    assert build == commented_command(INFRA / "Dockerfile", "docker build")  # one command, documented in both
    dockerfile, tag, context = build[build.index("-f") + 1], build[build.index("-t") + 1], build[-1]
    assert (ROOT / dockerfile) == INFRA / "Dockerfile" and context == "."  # from the repository root
    assert {c["image"] for pod in pod_specs(rayjob) for c in pod["containers"]} == {tag}


def test_the_gpu_extra_installs_only_packages_the_code_imports_lazily():
    extra = [re.match(r"[A-Za-z0-9_.-]+", d).group() for d in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert "deepspeed" not in extra  # FSDP2 is the sharded strategy; nothing imports DeepSpeed
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    sources = [f.read_text() for pattern in include for f in ROOT.glob(f"{pattern.rstrip('*')}/**/*.py")]
    for package in extra:
        module = package.lower().replace("-", "_")
        # indented: inside a function, so a CPU install without the extra still imports the package
        lazily = re.compile(rf"^[ \t]+(import|from) {module}\b", re.M)
        assert any(lazily.search(source) for source in sources), package
