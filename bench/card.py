"""The protocol card: how every number of a run was made, in a few lines, with departures from the paper flagged.

A suite states its protocol as ``Suite.card`` (captions, reference, resize, features, CLIP model and prefix) and
what the paper used as ``Suite.paper_protocol`` (label -> accepted values); the run adds its seed and, per model,
the sampler, steps, guidance, dtype actually used (after any CPU fallback) and device, read from the model's store.
Every report and manifest carries the card.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Card:
    lines: dict  # label -> value, the suite's and the run's
    models: dict  # model name -> {"sampler", "steps", "guidance", "dtype", "device"}
    deviations: list  # one sentence each: what differs from the paper's protocol

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sampler_summary(generation: dict | None) -> dict:
    """The card's row of one model, from the ``generation`` part of its store's fingerprint."""
    generation = generation or {}
    sampler = generation.get("sampler") or {}
    kind = sampler.get("kind")
    name = {"one-step": f"one step at t = {sampler.get('timestep')}",
            "rectified-flow": f"one Euler step of the velocity from t = {sampler.get('timestep')}"}.get(
        kind, sampler.get("scheduler"))
    multi = kind == "multi-step"
    return {"sampler": name, "steps": sampler.get("steps") if multi else 1,
            "guidance": sampler.get("guidance_scale") if multi else None,
            "prediction": sampler.get("prediction_type", "velocity" if kind == "rectified-flow" else None),
            "dtype": generation.get("dtype"), "device": generation.get("device")}


def suite_deviations(suite, lines: dict) -> list[str]:
    return [f"{label}: {lines.get(label)!r} (the paper: {' or '.join(map(repr, accepted))})"
            for label, accepted in suite.paper_protocol.items() if label in lines and lines[label] not in accepted]


def protocol_card(suite, config, specs, stores) -> Card:
    lines = {**suite.card, "noise seed": config.seed}
    models = {spec.name: sampler_summary(stores[spec.name].fingerprint.get("generation")) for spec in specs}
    deviations = suite_deviations(suite, lines)
    accepted = suite.paper_protocol.get("dtype")
    if accepted:
        for name, row in models.items():
            if row["dtype"] not in accepted:
                deviations.append(f"{name} generated in {row['dtype']} (the paper's inference: {accepted[0]})")
    return Card(lines, models, deviations)


def protocol_warnings(suite, config) -> list[str]:
    """The departures known before anything is generated (a partial reference set, fewer samples, ...)."""
    return suite_deviations(suite, {**suite.card, "noise seed": config.seed})


def markdown(card: Card) -> str:
    rows = ["| | |", "|---|---|"] + [f"| {label} | {value} |" for label, value in card.lines.items()]
    models = ["| model | sampler | steps | guidance | prediction | dtype | device |", "|---|---|---|---|---|---|---|"]
    models += [f"| {name} | {r['sampler']} | {r['steps']} | {'–' if r['guidance'] is None else r['guidance']} | "
               f"{r['prediction']} | {r['dtype']} | {r['device']} |" for name, r in card.models.items()]
    flagged = [f"- ⚠ {deviation}" for deviation in card.deviations] or ["- none"]
    return "\n\n".join(["## Protocol card", "\n".join(rows), "\n".join(models),
                        "Departures from the paper's protocol:\n" + "\n".join(flagged)])
