"""``bioattn record`` and ``bioattn analyze neural``: recordings of feature-map activity."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioattn.cli.common import (
    add_epochs,
    add_model_options,
    csv,
    default_of,
    experiment_config,
    floats,
    given,
    prepared,
)
from bioattn.errors import ConfigError


def cmd_record(args: argparse.Namespace) -> int:
    """Record feature-map activity with and without feature attention.

    The values come from ``--values`` (or ``[values] path``); a network other than the trained
    default uses the detectors kept next to them (``bioattn values`` writes them there), or
    fits them there once.
    """
    from bioattn.experiments.recording import RecordingConfig, record

    config = experiment_config(
        args, values={"path": None if args.values is None else str(args.values)}
    )
    if not config.values.path:
        raise ConfigError(
            "a recording needs values: give --values FILE (from `bioattn values` or a sweep's "
            "values.nc) or [values] path in the --config file"
        )
    experiment = prepared(args, config, values=True, run_dir=Path(config.values.path).parent)
    recording = RecordingConfig(
        **given(
            categories=args.categories,
            attend_layers=args.attend_layers,
            all_layers=True if args.all_layers else None,
            betas=args.betas,
            methods=args.methods,
            image_type=args.image_type,
            record_layers=args.record_layers,
            full_maps=args.full_maps,
            n_pos=args.n_pos,
            n_neg=args.n_neg,
            n_reference=args.n_reference,
            seed=args.record_seed,
            snr=args.snr,
        )
    )
    path = record(
        experiment.network,
        experiment.values,
        experiment.test_images,
        args.out,
        recording,
        detectors=experiment.detectors,
    )
    print(f"recording written to {path}")
    return 0


def cmd_analyze_neural(args: argparse.Namespace) -> int:
    """Neural analyses of a recording: CSV tables and figures."""
    from bioattn.analysis.neural import analyze_recording
    from bioattn.experiments.recording import open_recording

    options = given(
        analyses=args.analyses, category=args.category, min_relative_activity=args.min_activity
    )
    with open_recording(args.recording) as recording:
        report = analyze_recording(recording, args.out, **options)
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    if "fsgm_summary" in report.tables:
        table = report.tables["fsgm_summary"]
        table = table[table["relation"] != "upstream"]
        columns = ["attended_layer", "method", "beta", "recorded_layer", "median_slope"]
        print("FSGM test (median slope per rank, median intercept − 1):")
        print(table[[*columns, "median_intercept_minus_1"]].to_string(index=False))
    print(f"{len(report.files)} files written to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``record`` and ``analyze neural``."""
    from bioattn.analysis.neural import analyze_recording
    from bioattn.experiments.recording import RecordingConfig

    def default(name: str) -> str:
        return default_of(RecordingConfig, name)

    p = sub.add_parser(
        "record", help="record feature-map activity with and without feature attention"
    )
    add_model_options(p)
    add_epochs(p)
    p.add_argument(
        "--values",
        type=Path,
        default=None,
        help="values file from `bioattn values` (or [values] path in --config)",
    )
    p.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    p.add_argument(
        "--attend-layers",
        type=csv,
        default=None,
        help="comma-separated layers to attend, one condition each (default all)",
    )
    p.add_argument(
        "--all-layers", action="store_true", help="also attend every layer at once at β/10"
    )
    p.add_argument(
        "--betas", type=floats, default=None, help=f"attention strengths ({default('betas')})"
    )
    p.add_argument(
        "--methods",
        type=csv,
        default=None,
        help=f"comma-separated value types, as for sweeps (default {default('methods')})",
    )
    p.add_argument(
        "--categories",
        "--category",
        type=csv,
        default=None,
        help="comma-separated attended categories (default all; the FSGM test needs 2 or more)",
    )
    p.add_argument(
        "--image-type",
        default=None,
        help=f"task images: merged, array, standard or noise (default {default('image_type')}; "
        "array adds quadrant activity for the spatial analysis)",
    )
    p.add_argument("--record-layers", type=csv, default=None, help="layers to record (default all)")
    p.add_argument(
        "--full-maps",
        type=csv,
        default=None,
        help="layers whose full maps are recorded too (large; default none)",
    )
    p.add_argument(
        "--n-pos", type=int, default=None, help=f"positives per category ({default('n_pos')})"
    )
    p.add_argument(
        "--n-neg", type=int, default=None, help=f"negatives per category ({default('n_neg')})"
    )
    p.add_argument(
        "--n-reference",
        type=int,
        default=None,
        help=f"standard images per category for vector angles ({default('n_reference')}; "
        "0 for none)",
    )
    p.add_argument("--snr", type=float, default=None, help="SNR for the noise image type")
    p.add_argument(
        "--record-seed",
        type=int,
        default=None,
        help=f"seed of the stimulus sets ({default('seed')})",
    )
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("analyze", help="analyse recordings")
    analyze = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    q = analyze.add_parser(
        "neural", help="FSGM test, modulation index, vector angle and spatial globality"
    )
    q.add_argument("recording", type=Path, help="recording from `bioattn record`")
    q.add_argument("--out", type=Path, required=True, help="folder for tables and figures")
    q.add_argument(
        "--analyses",
        type=csv,
        default=None,
        help="comma-separated subset of fsgm, population, modulation, angle, spatial "
        "(default: all the recording supports)",
    )
    q.add_argument(
        "--category", default=None, help="attended category of the population scatter figure"
    )
    q.add_argument(
        "--min-activity",
        type=float,
        default=None,
        help="maps whose unattended activity is below this fraction of their layer's mean get "
        f"no activity ratio (default {default_of(analyze_recording, 'min_relative_activity')})",
    )
    q.set_defaults(func=cmd_analyze_neural)
