"""The fastmlp command line: parsing and printing only; the work lives in the modules below it."""
import json
import math
import sys
import time

import click
import numpy as np

from . import __version__
from .progress import Progress, SweepProgress, duration
from .store import json_safe, write_json_atomic
from .errors import UsageError
from .preflight import check_outputs
from .constants import LOSSES
from .engine import F0S, STOPS
from .reference import DEFAULT_INIT, INITS

DTYPES = ("float32", "float64")


# ------------------------------------------------------------------------------------------------ helpers
def _fail(message):
    """One line on stderr, exit status 2: bad input never ends in a traceback."""
    click.echo(f"fastmlp: error: {message}", err=True)
    sys.exit(2)


def emit_json(obj):
    click.echo(json.dumps(json_safe(obj), allow_nan=False))


def _check_backend(backend):
    """The engine class of a backend; one line (UsageError) when the GPU is asked for and none is usable."""
    from .backend import engine_class
    return engine_class(backend)


def _check_init_option(param):
    """--init names a scheme of the standard parameterization: refuse it when given with --param ntk."""
    ctx = click.get_current_context()
    if param == "ntk" and ctx.get_parameter_source("init") == click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--init applies to --param standard only: with --param ntk every parameter is N(0, 1) "
                         "(use --init-scale to scale them)")


def task_options(f):
    """Options that define the data: every command that draws samples takes the same ones."""
    f = click.option("--beta2", type=float, default=0.2, show_default=True,
                     help="temperature task: inverse temperature of class 1")(f)
    f = click.option("--beta1", type=float, default=0.1, show_default=True,
                     help="temperature task: inverse temperature of class 0")(f)
    f = click.option("--indices", default=None,
                     help="k-local indices / k-global offsets, 0-based, e.g. 0,1 [default: 0,...,k-1]")(f)
    f = click.option("--seed", type=int, default=0, show_default=True,
                     help="data seed: names the training and test samples")(f)
    f = click.option("--D", "D", type=int, default=None,
                     help="input dimension [default: the paper's D for the task]")(f)
    return f


def _options(*options):
    """One decorator applying click options in the order they are listed (so --help lists them in that order)."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


# The network and its training, spelled once for every command that trains (`train`, `run`).
network_options = _options(
    click.option("--N", "N", type=int, default=1000, show_default=True, help="training samples"),
    click.option("--L", "L", type=int, default=1, show_default=True, help="hidden layers"),
    click.option("--H", "H", type=int, default=100, show_default=True, help="hidden width"),
    click.option("--B", "B", type=int, default=50, show_default=True, help="minibatch size"))
training_options = _options(
    click.option("--max-epochs", type=int, default=2000, show_default=True, help="epoch cap per network"),
    click.option("--n-test", type=int, default=10000, show_default=True, help="fresh test samples"),
    click.option("--param", type=click.Choice(["standard", "ntk"]), default="standard", show_default=True,
                 help="standard parameterization (initialized by --init) or NTK parameterization (every parameter "
                      "N(0, 1), each layer scaled by sigma_w / sqrt(fan_in))"),
    click.option("--init", type=click.Choice(INITS), default=DEFAULT_INIT, show_default=True,
                 help="initialization of the standard parameterization: he (W ~ N(0, 2/fan_in), output layer "
                      "N(0, 1/fan_in), biases 0), lecun (W ~ N(0, 1/fan_in), biases 0) or torch (W and b ~ "
                      "U(+-1/sqrt(fan_in)), PyTorch's nn.Linear default); refused with --param ntk"),
    click.option("--init-scale", type=float, default=1.0, show_default=True,
                 help="multiplies every initial weight and bias (with --param ntk too)"),
    click.option("--loss", type=click.Choice(LOSSES), default="xent", show_default=True,
                 help="xent: softmax cross-entropy of the two logits; mse: (f - y)^2 / 2 and hinge2: "
                      "max(0, 1 - y f)^2 / 2 on the scalar output f = z1 - z0 with y = +-1; every loss predicts "
                      "class 1 where f > 0"),
    click.option("--stop", type=click.Choice(STOPS), default="zero-error", show_default=True,
                 help="zero-error: a network stops at the first epoch with zero training error (the paper's "
                      "rule); loss: at the first epoch whose mean training loss over its whole training set is at "
                      "most --target-loss"),
    click.option("--target-loss", type=float, default=None, help="the target of --stop loss"),
    click.option("--f0", type=click.Choice(F0S), default="keep", show_default=True,
                 help="keep: the network's function is its output f (the paper's); subtract: its output less its "
                      "initial output, f - f0, exactly 0 at the start (the lazy limit's setting: with the squared "
                      "loss in the NTK parameterization it tends to the NTK predictor as H grows)"),
    click.option("--sigma-w2", type=float, default=2.0, show_default=True, help="NTK parameterization: sigma_w^2"),
    click.option("--sigma-b2", type=float, default=0.0, show_default=True, help="NTK parameterization: sigma_b^2"),
    click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True),
    click.option("--backend", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
                 help="cpu: the Numba kernels; gpu: the CUDA kernels through CuPy (pip install 'fastmlp[gpu]')"))


class FastmlpGroup(click.Group):
    """Turns UsageError from anywhere below into one line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _fail(str(e))
        except click.UsageError as e:   # click's own (an unknown choice, a missing option): one line too
            _fail(e.format_message())


@click.group(cls=FastmlpGroup)
@click.version_option(__version__, prog_name="fastmlp")
@click.option("--threads", type=int, default=None, metavar="N",
              help="CPU threads of the engines and of the NTK's BLAS, e.g. fastmlp --threads 4 run ... [default: "
                   "NUMBA_NUM_THREADS, which is every core unless set]; with fewer networks than threads the "
                   "engine splits each network's layers over them")
def main(threads):
    """Train hundreds of small ReLU MLPs at once for depth-vs-generalization experiments.

    TASK is K-local, K-global (K = 1, 2, 3, ...) or temperature; see each command's --help.
    """
    from .provenance import git_commit
    git_commit()   # pinned now, with the code this process runs; records made later carry this commit
    if threads is not None:
        from .backend import set_cpu_threads
        set_cpu_threads(threads)


# --------------------------------------------------------------------------------------------------- info
@main.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def info(as_json):
    """Backends available, devices, versions and thread count; for the GPU, the CuPy, CUDA runtime and driver
    found, and why the GPU backend cannot run where it cannot."""
    from .provenance import cpu_info, cuda_version, git_commit, gpu_info, gpu_report, versions
    report = gpu_report()
    out = {"fastmlp": __version__, "backends": {"cpu": cpu_info(), "gpu": gpu_info()}, "gpu_stack": report,
           "versions": versions(), "git_commit": git_commit()}
    if as_json:
        emit_json(out)
        return
    cpu = out["backends"]["cpu"]
    click.echo(f"fastmlp {__version__}")
    click.echo(f"cpu backend: {cpu['device']}, {cpu['threads']} threads (fastmlp --threads N for fewer, "
               f"NUMBA_NUM_THREADS for more)")
    click.echo(f"cpu kernels: {cpu['kernels']} family, compiled for {cpu['llvm_target']} with {cpu['llvm_features']} "
               f"features (NUMBA_CPU_NAME and NUMBA_CPU_FEATURES choose another)")
    found = [f"{label} {value}" for label, value in (
        ("CuPy", report["cupy"]), ("CUDA runtime", cuda_version(report["cuda_runtime"])),
        ("driver for CUDA", cuda_version(report["cuda_driver"])), ("NVRTC", report["nvrtc"]),
        ("cuBLAS", report["cublas"])) if value is not None]
    if report["problem"] is None:
        click.echo(f"gpu backend: {report['device']} ({report['devices']} device(s)); " + ", ".join(found))
    else:
        click.echo(f"gpu backend: none: {report['problem']}")
        click.echo("  found: " + (", ".join(found) if found else "nothing"))
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))
    if out["git_commit"]:
        click.echo(f"git commit: {out['git_commit']}")


# --------------------------------------------------------------------------------------------------- data
@main.command()
@click.argument("task")
@task_options
@click.option("--N", "N", type=int, required=True, help="number of samples")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--start", type=int, default=0, show_default=True, help="index of the first sample")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="output .npz file")
def data(task, D, seed, indices, beta1, beta2, N, split, start, out):
    """Write samples of a split to a .npz (x float32 (N, D), y int8 in {0, 1}).

    These are exactly the samples that `fastmlp train` uses for the same TASK, --D and --seed.
    """
    from .tasks import generate, parse_task
    spec = parse_task(task, D=D, indices=indices, beta1=beta1, beta2=beta2)
    if N < 1:
        raise UsageError(f"--N must be at least 1 (got {N})")
    check_outputs(("--out", out, "npz"))
    x, y = generate(spec, seed, split, start, N)
    np.savez(out, x=x, y=y)
    click.echo(f"wrote {N} {split} samples of {spec.name} (D = {spec.D}, seed {seed}) to {out}", err=True)


# -------------------------------------------------------------------------------------------------- train
@main.command()
@click.argument("task")
@task_options
@network_options
@click.option("--lr", required=True, help="learning rates, comma-separated, e.g. 0.01,0.1")
@click.option("--seeds", default="0", show_default=True,
              help="network seeds (initialization and minibatch order), e.g. 0-9")
@training_options
@click.option("--save-params", type=click.Path(dir_okay=False), default=None,
              help="write every network's final parameters to this .npz (W0, b0, ..., W{L}, b{L}; "
                   "W{l} has shape (networks, fan_in, fan_out), in the order of the records)")
@click.option("--save-outputs", type=click.Path(dir_okay=False), default=None,
              help="write every network's output f = z1 - z0 on the --n-test test points to this .npz (f: "
                   "(networks, n_test); y: the labels as +-1), the points of `ntk --save-outputs`")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (progress stays off)")
def train(task, D, seed, indices, beta1, beta2, N, L, H, B, lr, seeds, max_epochs, n_test, param, init, init_scale,
          loss, stop, target_loss, f0, sigma_w2, sigma_b2, dtype, backend, save_params, save_outputs, as_json):
    """Train the grid of learning rates x network seeds in one engine call on one training set.

    Each network trains until its training error is exactly zero, it diverges, or --max-epochs; then every
    network's test error is measured on --n-test fresh samples.
    """
    from . import train as train_mod
    from .tasks import parse_task

    spec = parse_task(task, D=D, indices=indices, beta1=beta1, beta2=beta2)
    _check_init_option(param)
    lrs = train_mod.parse_floats(lr, "--lr")
    ranges = train_mod.int_ranges(seeds, "--seeds")
    train_mod.check_seeds(ranges)
    train_mod.check_config(N, L, H, B, max_epochs, n_test)
    check_outputs(("--save-params", save_params, "npz"), ("--save-outputs", save_outputs, "npz"))
    n_networks = len(lrs) * sum(hi - lo + 1 for lo, hi in ranges)
    train_mod.check_size(spec.D, n_networks, N, H, L, dtype, backend)   # before a list of that many seeds is made
    net_seeds = train_mod.expand(ranges)
    bar = Progress(f"train {spec.name} M={len(lrs) * len(net_seeds)}", enabled=not as_json)
    out = train_mod.run(spec, lrs, net_seeds, N=N, L=L, H=H, B=B, seed=seed, max_epochs=max_epochs, n_test=n_test,
                        param=param, sigma_w2=sigma_w2, sigma_b2=sigma_b2, init=init, init_scale=init_scale,
                        loss=loss, stop=stop, target_loss=target_loss, f0=f0, dtype=dtype, backend=backend,
                        save_params=save_params, save_outputs=save_outputs, progress=bar, note=bar.note)
    bar.close()
    if as_json:
        emit_json(out)
        return
    init_text = f"init={init}" if param == "standard" else "init=N(0,1)"
    stop_text = "stop=zero-error" if stop == "zero-error" else f"stop=loss<={target_loss:g}"
    click.echo(f"{spec.name}  D={spec.D} N={N} L={L} H={H} B={B}  param={param} {init_text} "
               f"init_scale={init_scale:g} loss={loss} {stop_text}{' f0=subtract' if f0 == 'subtract' else ''} "
               f"dtype={dtype}  "
               f"seed={seed}  n_test={n_test}")
    click.echo(f"{'lr':>10} {'seed':>6} {'epochs':>7} {'status':>13} {'train_err':>10} {'test_err':>9}")
    for n in out["networks"]:
        status = "converged" if n["converged"] else "DIVERGED" if n["diverged"] else "not converged"
        train_err = "-" if n["train_error"] is None else f"{n['train_error']:.4f}"
        test = "-" if n["test_error"] is None else f"{n['test_error']:.4f}"   # a diverged one's: DIVERGED_ERROR
        click.echo(f"{n['lr']:>10g} {n['seed']:>6} {n['epochs']:>7} {status:>13} {train_err:>10} {test:>9}")
    s, tp, t = out["summary"], out["throughput"], out["timing"]
    click.echo(f"{s['converged']}/{s['n_networks']} converged, {s['diverged']} diverged; "
               f"train {t['train_s']:.1f}s ({tp['network_samples_per_s'] or 0:.3g} network-samples/s, "
               f"{tp['gflops'] or 0:.1f} GFLOP/s), test {t['test_s']:.1f}s, wall {t['wall_s']:.1f}s "
               f"(compile {t['compile_s']:.1f}s)")


# ---------------------------------------------------------------------------------------------------- run
@main.command()
@click.argument("task")
@task_options
@network_options
@click.option("--folds", type=int, default=10, show_default=True, help="cross-validation folds K")
@click.option("--bo-calls", type=int, default=20, show_default=True,
              help="learning rates scored by the Bayesian optimization")
@click.option("--bo-batch", type=int, default=4, show_default=True,
              help="learning rates asked for at once: bo-batch x folds networks train in one engine call")
@click.option("--lr-min", type=float, default=1e-4, show_default=True, help="lower end of the search range")
@click.option("--lr-max", type=float, default=10.0, show_default=True, help="upper end of the search range")
@click.option("--lr-widen", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="on: while the best learning rate lies within a tenth of a decade of an end of the search range, "
                   "move that end out by a decade (never below 1e-5 nor above 100) and score --bo-batch more rates "
                   "there; off: search [--lr-min, --lr-max] only")
@click.option("--lr", type=float, default=None, help="skip the search and train the repeats at this learning rate")
@click.option("--repeats", type=int, default=10, show_default=True,
              help="final networks on all N samples at the selected learning rate")
@training_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="also write the record to this JSON file (atomically)")
@click.option("--json", "as_json", is_flag=True, help="print the record as one JSON object (progress stays off)")
def run(task, D, seed, indices, beta1, beta2, N, L, H, B, folds, bo_calls, bo_batch, lr_min, lr_max, lr_widen, lr,
        repeats, max_epochs, n_test, param, init, init_scale, loss, stop, target_loss, f0, sigma_w2, sigma_b2, dtype,
        backend, out, as_json):
    """The paper's protocol for one (TASK, N, L): the learning rate by K-fold cross-validation and Bayesian
    optimization over log10(lr), then --repeats networks on all N samples at that rate, then their test error.

    Every candidate of an optimizer batch is scored by --folds networks (each trained on all folds but one and
    validated on it; a diverged one counts as error 0.5), and all of them train in one engine call.  --seed names
    the data, the folds, the networks and the optimizer: the same seed gives the same record apart from timings.
    """
    from . import protocol
    from .tasks import parse_task

    spec = parse_task(task, D=D, indices=indices, beta1=beta1, beta2=beta2)
    _check_init_option(param)
    check_outputs(("--out", out, "json"))
    t0 = time.perf_counter()

    def say(text):
        if not as_json:
            click.echo(f"run {spec.name} N={N} L={L}: {text} [{time.perf_counter() - t0:.0f}s]", err=True)

    rec = protocol.run(spec, N=N, L=L, H=H, B=B, folds=folds, bo_calls=bo_calls, bo_batch=bo_batch, lr_min=lr_min,
                       lr_max=lr_max, repeats=repeats, n_test=n_test, seed=seed, backend=backend, param=param,
                       sigma_w2=sigma_w2, sigma_b2=sigma_b2, init=init, init_scale=init_scale, loss=loss, stop=stop,
                       target_loss=target_loss, f0=f0, max_epochs=max_epochs, dtype=dtype, lr=lr, lr_widen=lr_widen,
                       progress=say)
    if as_json:
        emit_json(rec)                # first: the record reaches stdout even if the file cannot be written now
    if out:
        try:
            write_json_atomic(out, rec)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write the record ({e.strerror or e})") from None
    if as_json:
        return
    if rec["search"]:
        click.echo(f"{'lr':>10} {'val_err':>8}  fold epochs")
        for h in sorted(rec["search"]["history"], key=lambda h: h["lr"]):
            click.echo(f"{h['lr']:>10.4g} {h['mean_error']:>8.4f}  {' '.join(map(str, h['fold_epochs']))}")
    f = rec["final"]
    te = f["test_error"]
    std = "-" if te["std"] is None else f"{te['std']:.4f}"
    click.echo(f"selected lr {rec['selected_lr']:.4g}: test error {te['mean']:.4f} +- {std} over {repeats} repeats "
               f"({f['converged']} converged, {f['not_converged']} not converged, {f['diverged']} diverged)")
    t = rec["timing"]
    click.echo(f"wall {t['wall_s']:.1f}s (search {t['search_s']:.1f}s, final {t['final_s']:.1f}s, "
               f"test {t['test_s']:.1f}s, compile {t['compile_s']:.1f}s)" + (f"; record in {out}" if out else ""))


# ---------------------------------------------------------------------------------------------------- ntk
@main.command()
@click.argument("task")
@task_options
@click.option("--N", "N", type=int, default=1000, show_default=True, help="training samples per repeat")
@click.option("--L", "L", type=int, default=1, show_default=True, help="hidden layers of the network")
@click.option("--repeats", type=int, default=10, show_default=True,
              help="training sets: repeat r uses samples r*N..(r+1)*N-1 of the train split")
@click.option("--n-test", type=int, default=10000, show_default=True,
              help="fresh test samples (the test set of train and run)")
@click.option("--sigma-w2", type=float, default=2.0, show_default=True, help="NTK parameterization: sigma_w^2")
@click.option("--sigma-b2", type=float, default=0.0, show_default=True, help="NTK parameterization: sigma_b^2")
@click.option("--kind", type=click.Choice(["ntk", "nngp"]), default="ntk", show_default=True,
              help="regress with the NTK Theta or the NNGP kernel K")
@click.option("--backend", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--save-outputs", type=click.Path(dir_okay=False), default=None,
              help="write the predictor f(x*) of every repeat on the --n-test test points to this .npz (f: "
                   "(repeats, n_test); y: the labels as +-1), the points of `train --save-outputs`")
@click.option("--json", "as_json", is_flag=True, help="print the record as one JSON object (progress stays off)")
def ntk(task, D, seed, indices, beta1, beta2, N, L, repeats, n_test, sigma_w2, sigma_b2, kind, backend, save_outputs,
        as_json):
    """Test error of kernel regression with the analytic NTK of the depth-L ReLU network (the infinite-width,
    lazy-learning limit of `train --param ntk`): f(x) = Theta(x, X) Theta(X, X)^-1 y with y = +-1, class by sign.

    Float64, Cholesky (a diagonal jitter only if it fails, recorded).  Repeat 0 trains on exactly the N samples
    that `train` and `run` use for --seed; repeat r on samples r*N..(r+1)*N-1 of the same train split.  Every
    repeat is tested on the first --n-test samples of the test split of --seed, the test set of `train` and `run`.
    The N x N Gram matrix takes 8 N^2 bytes (3.2 GB at N = 20,000); a run that would not fit is refused.
    """
    from . import ntk as ntk_mod
    from .tasks import parse_task

    spec = parse_task(task, D=D, indices=indices, beta1=beta1, beta2=beta2)
    t0 = time.perf_counter()

    def say(text):
        if not as_json:
            click.echo(f"ntk {spec.name} N={N} L={L}: {text} [{time.perf_counter() - t0:.0f}s]", err=True)

    rec = ntk_mod.run(spec, N=N, L=L, n_test=n_test, repeats=repeats, seed=seed, sigma_w2=sigma_w2,
                      sigma_b2=sigma_b2, kind=kind, backend=backend, progress=say, save_outputs=save_outputs)
    if as_json:
        emit_json(rec)
        return
    click.echo(f"{spec.name}  D={spec.D} N={N} L={L}  kind={kind} sigma_w2={sigma_w2:g} sigma_b2={sigma_b2:g}  "
               f"seed={seed}  n_test={n_test}")
    click.echo(f"{'repeat':>6} {'test_err':>9} {'train_err':>10} {'jitter':>8} {'kernel_s':>9} {'solve_s':>8} "
               f"{'test_s':>7}")
    for r in rec["repeats"]:
        test = "-" if r["test_error"] is None else f"{r['test_error']:.4f}"
        click.echo(f"{r['repeat']:>6} {test:>9} {r['train_error']:>10.4f} {r['jitter']:>8.2g} "
                   f"{r['kernel_s']:>9.2f} {r['solve_s']:>8.2f} {r['test_s']:>7.2f}")
    te = rec["test_error"]
    if te["mean"] is not None:
        std = "-" if te["std"] is None else f"{te['std']:.4f}"
        click.echo(f"test error {te['mean']:.4f} +- {std} over {repeats} repeats")
    click.echo(f"wall {rec['timing']['wall_s']:.1f}s")


# -------------------------------------------------------------------------------------------------- sweep
def sweep_keys(command):
    """The sweep keys of the `run`, `ntk` or `train` command: its options without their dashes, and TASK as `task`;
    train's comma-separated lr and seeds are list keys, spelled one way in a job's identity."""
    from .sweep import Key
    from .train import canonical_lrs, canonical_seeds
    lists = {"lr": canonical_lrs, "seeds": canonical_seeds} if command.name == "train" else {}
    keys = {"task": Key("task", str, None)}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in ("as_json", "out", "save_outputs", "save_params"):
            continue
        name = max(p.opts, key=len).lstrip("-")
        if name in lists:
            keys[name] = Key(name, str, p.default, canonical=lists[name])
        elif isinstance(p.type, click.Choice):
            keys[name] = Key(name, str, p.default, tuple(p.type.choices))
        else:
            kind = {click.types.IntParamType: int, click.types.FloatParamType: float,
                    click.types.StringParamType: str}[type(p.type)]
            keys[name] = Key(name, kind, p.default)
    return keys


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="result directory, one JSON record per job [default: results/NAME for SWEEP_FILE NAME.toml]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="replace a key of the file in every grid whose command takes it, e.g. --set N=250,500 (a list) "
                   "or --set backend=gpu; repeatable")
@click.option("--workers", type=int, default=None,
              help="run on a local Dask cluster of this many worker processes, the cores shared among them "
                   "(pip install 'fastmlp[cluster]'); on a GPU machine, one per GPU")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="run on the existing Dask cluster whose scheduler is at ADDRESS, e.g. tcp://10.0.0.1:8786")
@click.option("--slurm", "slurm_jobs", type=int, default=None, metavar="JOBS",
              help="run on Dask workers in JOBS SLURM batch jobs, submitted with dask-jobqueue (pip install "
                   "'fastmlp[cluster]'), kept queued or running until the sweep ends; records come back to this "
                   "process, which alone writes the store")
@click.option("--slurm-cores", type=int, default=None, metavar="N",
              help="CPU cores of each SLURM job, shared among its workers [default: 1]")
@click.option("--slurm-workers", type=int, default=None, metavar="N",
              help="Dask worker processes in each SLURM job, one sweep job at a time each [default: 1]")
@click.option("--slurm-memory", default=None, metavar="SIZE",
              help="memory of each SLURM job, e.g. 8G [default: the largest job's estimate plus 1 GiB, per worker]")
@click.option("--slurm-walltime", default=None, metavar="TIME",
              help="time limit of each SLURM job, e.g. 12:00:00 or 2-00:00:00 [default: the partition's]")
@click.option("--slurm-partition", default=None, metavar="NAME",
              help="SLURM partition of the jobs [default: the cluster's default partition]")
@click.option("--only", "only", multiple=True, metavar="KEY=VALUE",
              help="run only the jobs with this value of a key (or one of a comma-separated list), e.g. --only "
                   "command=ntk or --only N=8000,16000: a slice of the sweep, with the same job ids; repeatable")
@click.option("--shard", default=None, metavar="i/K",
              help="run only the i-th of K slices of the jobs (0 <= i < K), for batch-system job arrays")
@click.option("--retry-failed", is_flag=True, help="run again the jobs whose stored record is failed")
@click.option("--claim-timeout", type=float, default=None, metavar="SECONDS",
              help="a job claimed by another process whose claim has not been renewed for this long is taken over "
                   "(that process was killed) [default: 600]")
@click.option("--dry-run", is_flag=True, help="list the jobs, their ids, stored status and claims; run nothing")
@click.option("--json", "as_json", is_flag=True, help="print a summary as one JSON object (progress stays off)")
def sweep(sweep_file, store_dir, overrides, workers, scheduler, slurm_jobs, slurm_cores, slurm_workers, slurm_memory,
          slurm_walltime, slurm_partition, only, shard, retry_failed, claim_timeout, dry_run, as_json):
    """Run every job of a sweep file (a grid of `run`, `ntk` or `train` jobs) that the store does not hold yet.

    The file's keys are the options of `fastmlp run` (or of `fastmlp ntk` or `fastmlp train`, with command = "ntk"
    or "train") without their dashes, TASK as task; list values are the axes of the grid (a train job's lr and seeds
    are its comma-separated lists, e.g. lr = "0.1,0.3", seeds = "0-9"), and [[grid]] tables add further grids.  A job is
    named by a hash of its resolved configuration, and its record is written to the store the moment it
    finishes.  Stop the sweep at any time and run the same command again: finished jobs are skipped, and so are
    failed ones unless --retry-failed.  Exit status 1 when a job of the sweep has a failed record.

    Several sweep processes, on one machine or on several that share the store's directory, divide the jobs of one
    store between them: each claims a job before it runs it, waits at the end for the jobs others hold, and takes
    over a job whose claim is not renewed for --claim-timeout seconds.
    """
    from pathlib import Path

    from . import sweep as sw
    from .store import Store

    schemas = {"run": sweep_keys(run), "ntk": sweep_keys(ntk), "train": sweep_keys(train)}
    pairs = [sw.parse_override(text, schemas) for text in overrides]
    jobs, settings = sw.read_sweep(sweep_file, schemas, pairs)
    if only:
        jobs = sw.select_only(jobs, [sw.parse_override(text, schemas, "--only") for text in only])
        if not jobs:
            raise UsageError(f"--only {' '.join(only)}: no job of {sweep_file} has these settings")
    if shard:
        jobs = sw.select_shard(jobs, shard)
    if claim_timeout is not None and not (math.isfinite(claim_timeout) and claim_timeout > 0):
        raise UsageError(f"--claim-timeout must be a positive number of seconds (got {claim_timeout:g})")
    store_path = Path(store_dir or Path("results") / Path(sweep_file).stem)
    store = Store(store_path, create=False) if store_path.exists() else None   # read only, for now
    statuses = store.statuses() if store else {}
    todo, done, failed = sw.plan(jobs, statuses, retry_failed)
    if dry_run:
        from .store import is_stale
        claims = store.claims() if store else {}
        retried = {job.id for job in todo} if retry_failed else ()   # failed jobs are retried only then
        lines = []
        for job in jobs:
            status = statuses.get(job.id, "pending")
            if status == "failed" and job.id in retried:
                status = "failed, to retry"
            holder = claims.get(job.id) if claims else None
            if holder is not None and status != "done":
                stale = is_stale(holder, **({} if claim_timeout is None else {"timeout": claim_timeout}))
                status = f"claimed by {holder.get('host', '?')}:{holder.get('pid', '?')}{' (stale)' if stale else ''}"
            lines.append(f"{job.id}  {status:<16} {job.command_line()}\n")
            if len(lines) == 10000:   # in blocks: a million jobs never make one string
                click.echo("".join(lines), nl=False)
                lines = []
        click.echo("".join(lines), nl=False)
        n_claimed = sum(job.id in claims for job in todo)
        click.echo(f"{len(jobs)} jobs: {len(done)} done, {len(failed)} failed (skipped), {len(todo)} to run"
                   + (f" ({n_claimed} of them claimed by running sweeps)" if n_claimed else "")
                   + f"; store {store_path}", err=True)
        return
    n_workers = workers if workers is not None else settings["workers"]
    slurm = _slurm_request(slurm_jobs, workers, scheduler, todo, cores=slurm_cores, workers=slurm_workers,
                           memory=slurm_memory, walltime=slurm_walltime, partition=slurm_partition)
    if slurm_jobs is not None:
        n_workers = None        # the file's `workers` sizes a local cluster, which a sweep on SLURM does not start
    here = not scheduler and slurm_jobs is None
    if todo and here and any(job.config["backend"] == "gpu" for job in todo):
        _check_backend("gpu")   # this machine runs them: refuse now rather than fail every job
    if todo and here and not n_workers:
        sw.check_sizes(todo)    # they run here, in this process: refuse now what would not fit
    store = Store(store_path)   # created if missing, checked writable, cleaned of what killed writers left
    t0 = time.perf_counter()
    say = (lambda text: None) if as_json else (lambda text: click.echo(f"sweep: {text}", err=True))
    say(f"{len(jobs)} jobs in {sweep_file}: {len(done)} done already, "
        + (f"{len(failed)} failed (skipped; --retry-failed to rerun), " if failed else "")
        + f"{len(todo)} to run; store {store_path}" + (" (created)" if store.created else ""))
    progress = SweepProgress(len(jobs) - len(failed), len(done), 0, enabled=not as_json)
    written, by_others = [], []
    if todo:
        import signal
        signal.signal(signal.SIGTERM, signal.default_int_handler)   # a batch system's SIGTERM: stop as on Ctrl-C
        if slurm is not None:
            from .slurm import SlurmExecutor
            executor = SlurmExecutor(slurm, say=say)
        else:
            executor = sw.executor_for(n_workers, scheduler, job_progress=progress.job)
        say(f"running {executor.description}")

        def other(rec):
            by_others.append(rec)
            progress(rec)
        try:
            written = sw.run_jobs(todo, store, executor, progress, timeout=claim_timeout, on_other=other, say=say,
                                  warn=lambda text: click.echo(f"sweep: warning: {text}", err=True))
        except KeyboardInterrupt:
            progress.close()
            click.echo(f"sweep: interrupted; every finished job is in {store_path}: run the same command to go on",
                       err=True)
            sys.exit(130)
        finally:
            executor.close()
        progress.close()
    n_failed = len(failed) + sum(rec["status"] == "failed" for rec in written + by_others)
    summary = {"sweep": str(sweep_file), "store": str(store_path), "jobs": len(jobs), "skipped_done": len(done),
               "skipped_failed": len(failed), "ran": len(written), "ran_elsewhere": len(by_others),
               "done": len(done) + sum(rec["status"] == "done" for rec in written + by_others), "failed": n_failed,
               "wall_s": time.perf_counter() - t0}
    if as_json:
        emit_json(summary)
    else:
        say(f"{summary['done']}/{len(jobs)} jobs done, {n_failed} failed; ran {len(written)} in "
            f"{duration(summary['wall_s'])}" + (f", {len(by_others)} by other processes" if by_others else "")
            + ("; see the errors with `fastmlp collect`, rerun with --retry-failed" if n_failed else ""))
    if n_failed:
        sys.exit(1)


def _slurm_request(jobs, local_workers, scheduler, todo, **options):
    """The checked `fastmlp.slurm.Request` of the --slurm options (None without --slurm, or with no job to run), or
    UsageError in one line before anything is submitted or the store is created."""
    given = [f"--slurm-{name}" for name, value in options.items() if value is not None]
    if jobs is None:
        if given:
            raise UsageError(f"{given[0]} applies to a sweep on SLURM: add --slurm JOBS")
        return None
    if local_workers is not None or scheduler:
        raise UsageError("give one of --workers (a local cluster), --scheduler (an existing one) and --slurm")
    if not todo:
        return None
    from .slurm import check_request
    return check_request(jobs, todo, **options)


# ------------------------------------------------------------------------------------------------ collect
@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="write the table as CSV to this file (- for stdout)")
@click.option("--jsonl", "jsonl_out", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="write the table as JSON lines to this file (- for stdout)")
@click.option("--status", type=click.Choice(["all", "done", "failed"]), default="all", show_default=True,
              help="which jobs to include")
@click.option("--candidates", "candidates_out", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="also write, as CSV to this file, a row per learning rate the searches scored: the job's id and "
                   "settings, the rate, its mean validation error, and how many fold networks converged, hit the "
                   "epoch cap or diverged, in how many epochs")
@click.option("--replace-in", "replace_in", type=click.Path(dir_okay=False, exists=True), default=None,
              help="rewrite this job table (a CSV collect wrote) with the store's rows in place of the rows of the "
                   "same job id, the others kept and new ones added at its end: a rerun of some jobs into a store "
                   "of its own")
def collect(store_dir, csv_out, jsonl_out, status, candidates_out, replace_in):
    """Flatten the job records of a store into one table, a row per job: id, status, command, the resolved
    configuration, then selected_lr (and the search range it ended with), test error mean/std/count,
    converged/diverged/not_converged, the fewest and most epochs of the final networks, the best validation error,
    wall time, device, version and error.  CSV on stdout when no file is given.  --replace-in puts the store's rows
    into a job table collected before, in place of the rows of the same job ids (a rerun of some of its jobs)."""
    import csv

    from .store import Store, candidates, replace_rows, table, write_csv, write_csv_atomic, write_jsonl

    check_outputs(("--csv", csv_out, "csv"), ("--jsonl", jsonl_out, "jsonl"), ("--candidates", candidates_out, "csv"),
                  ("--replace-in", replace_in, "csv"))
    records = [rec for rec in Store(store_dir, create=False).records() if status in ("all", rec["status"])]
    columns, rows = table(records)
    if replace_in is not None:
        with open(replace_in, newline="") as f:
            old = list(csv.DictReader(f))
        if not old or "id" not in old[0]:
            raise UsageError(f"--replace-in {replace_in}: not a job table (no rows with an id column)")
        write_csv_atomic(replace_in, *replace_rows(old, records))
        replaced = len({r["id"] for r in old} & {r["id"] for r in rows})
        click.echo(f"collect: {replaced} rows of {replace_in} replaced, {len(rows) - replaced} added", err=True)
    if csv_out is None and jsonl_out is None and candidates_out is None and replace_in is None:
        csv_out = "-"
    for out, write, (cols, rows_) in ((csv_out, write_csv, (columns, rows)), (jsonl_out, write_jsonl, (columns, rows)),
                                      (candidates_out, write_csv, candidates(records))):
        if out is not None:
            with click.open_file(out, "w") as f:
                write(f, cols, rows_)
    n_failed = sum(rec["status"] == "failed" for rec in records)
    click.echo(f"collect: {len(rows)} jobs ({n_failed} failed) from {store_dir}", err=True)


# --------------------------------------------------------------------------------------------------- plot
@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="the picture (.png, .pdf or .svg); the plotted numbers go beside it as .csv")
@click.option("--x", "x", type=click.Choice(["auto", "N", "lr", "init-scale"]), default="auto", show_default=True,
              help="N: test error against N, a panel per task; lr: against a fixed learning rate, a panel per "
                   "(task, N); init-scale: against the initial scale, a panel per (task, N); auto: lr when the "
                   "store's runs vary a fixed lr, else N")
def plot(store_dir, out, x):
    """The paper's figures from a store: test error against N, a curve per depth L with error bars over the data
    seeds (over the repeats where a point has one seed), a panel per task, and the NTK of each depth as its own
    dashed curve; or test error against the learning rate, with the NTK as dashed horizontal lines (its lr -> 0
    limit)."""
    from pathlib import Path

    from .plot import plot_store
    check_outputs(("--out", out, "figure"), ("--out (its numbers)", Path(out).with_suffix(".csv"), "csv"))
    fig, points = plot_store(store_dir, out, x=x)
    curves = {(p["panel"], p["curve"]) for p in points}
    click.echo(f"plot: {len(fig.axes)} panels, {len(curves)} curves, {len(points)} points; wrote {out} and "
               f"{Path(out).with_suffix('.csv')}", err=True)


# -------------------------------------------------------------------------------------------------- bench
@main.command()
@click.option("--workload", "workloads", multiple=True, type=click.Choice(["W1", "W2", "W3", "W4", "W5", "W6"]),
              help="workload(s) to run [default: all six]")
@click.option("--impl", "impls", multiple=True,
              type=click.Choice(["fastmlp-cpu", "fastmlp-cpu-mse", "fastmlp-cpu-hinge2", "numpy", "numpy-procs",
                                 "torch", "fastmlp-gpu", "fastmlp-gpu-nograph", "fastmlp-gpu-tf32"]),
              help="implementation(s) [default: fastmlp-cpu, numpy, numpy-procs, torch when importable, fastmlp-gpu "
                   "when a GPU is usable]; numpy-procs splits the networks over one single-threaded NumPy process "
                   "per thread; fastmlp-cpu-mse and -hinge2 train with that loss instead of cross-entropy; "
                   "-nograph launches every kernel on its own (no CUDA graphs), -tf32 lets cuBLAS use TF32")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="rounds: timed calls of each implementation; medians are reported")
@click.option("--epochs", type=int, default=None, help="epochs per timed call [default: per workload]")
@click.option("--threads", type=int, default=None, help="threads for every implementation [default: all cores]")
@click.option("--networks", type=int, default=None, help="networks M trained at once [default: the workload's]")
@click.option("--no-sgemm", is_flag=True, help="leave out the first line, the machine's large-sgemm rate")
@click.option("--isa", type=click.Choice(["native", "avx2"]), default="native", show_default=True,
              help="instruction set: native (this CPU's), or avx2: the engine compiled for AVX2 + FMA and the peers "
                   "and sgemm restricted to it (OpenBLAS core type, MKL, PyTorch, NumPy), in a process of its own: "
                   "what an AVX2 machine gets, measured on a wider one")
def bench(workloads, impls, repeats, epochs, threads, networks, no_sgemm, isa):
    """Throughput on the standard workloads W1-W6 (docs/design.md), one JSON line per (workload, impl), after a line
    with the machine's large-sgemm rate (a 4096 x 4096 float32 product through NumPy's BLAS) in the same run.

    Every implementation trains the same networks for a fixed number of epochs (no early stop), side by side
    in one process; rates are network-samples/s and useful GFLOP/s (4DH + 6(L-1)H^2 + 12H per network-sample).
    They run in rounds, one timed call of each (and one sgemm product) per round, so that the machine's load falls
    on all alike; per workload, a last line gives fastmlp's ratios to the best peer and to sgemm taken within each
    round (median and quartiles over the rounds).  The first line says what each library runs on (--isa).
    """
    import os
    import subprocess

    from . import bench as b
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be at least 1 (got {epochs})")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {threads})")
    if networks is not None and networks < 1:
        raise UsageError(f"--networks must be at least 1 (got {networks})")
    if "torch" in impls and "torch" not in b.IMPLS:
        raise UsageError("--impl torch needs PyTorch (pip install torch); it is not importable here")
    if any(name.startswith("fastmlp-gpu") for name in impls):
        _check_backend("gpu")
    env = b.isa_env(isa)
    if any(os.environ.get(k) != v for k, v in env.items()):   # the switches are read as the libraries load
        args = [f"--{name}={value}" for name, values in (("workload", workloads), ("impl", impls)) for value in values]
        args += [f"--{name}={value}" for name, value in (("repeats", repeats), ("epochs", epochs), ("threads", threads),
                                                          ("networks", networks)) if value is not None]
        args += ["--no-sgemm"] * no_sgemm
        sys.exit(subprocess.run([sys.executable, "-m", "fastmlp.cli", "bench", f"--isa={isa}", *args],
                                env=os.environ | env).returncode)
    b.run_bench(workloads=workloads or tuple(b.WORKLOADS), impls=list(impls) or None, epochs=epochs,
                repeats=repeats, threads=threads, emit=click.echo, networks=networks, sgemm=not no_sgemm, isa=isa)


if __name__ == "__main__":
    main()
