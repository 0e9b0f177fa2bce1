"""The probes stage: familiarity probes and completion prompts made from the target and its dictionary
(`anchors.probes`), for a target without hand-written ones, split into dev and test halves.

Every candidate goes to the dev or the test half by a hash of its prompt; each half takes up to half its
probes from the held-out text of the split stage, the rest from the training text. Each probe is checked
against the base model: the share whose answer's first token
the base ranks in its top 10 says whether they ask something the model knows (`stats.json`,
`base_top10_share`); a set the base cannot answer measures nothing. No probe is dropped for that, so the
check cannot shape the figure it qualifies.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from whoharry.anchors import qa
from whoharry.anchors.dictionary import load_anchors
from whoharry.anchors.probes import cloze_candidates, completion_prompts, dev_or_test, select_probes
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.core import artifacts, http, models
from whoharry.core.text import read_text
from whoharry.evaluation.probes import score_probes
from whoharry.stages import split
from whoharry.stages.common import Outcome, run_stage

log = logging.getLogger(__name__)

NAME = "probes"
FILES = {"probes": "probes_{half}.jsonl", "completions": "completions_{half}.jsonl", "qa": "qa_{half}.jsonl"}
# target_files settings of the unlearning, not of the probes: left out of the probes' key
UNLEARNING_SETTINGS = ("augment_share", "retain_labels", "wise_ft")
REPLIES_FILE = "qa_replies.jsonl"  # the endpoint's replies, one a line, so that an interrupted stage resumes


def path(out: Path, kind: str, half: str) -> Path:
    """The generated file of `kind` (probes, completions) and `half` (dev, test) in the run folder `out`."""
    return out / NAME / FILES[kind].format(half=half)


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of the probes: the split, the dictionary's content, the seed, the settings, and the
    base model that checks them."""
    return fingerprint({
        "split": artifacts.stage_fingerprint(out / split.NAME),
        "anchors": artifacts.file_hash(cfg.data.anchors) if cfg.data.anchors.is_file() else "missing",
        "seed": cfg.seed, "model": model_key(cfg.model, reading=True),
        "settings": {k: v for k, v in to_dict(cfg.target_files).items() if k not in UNLEARNING_SETTINGS},
        "precision": cfg.eval.precision,
        "qa_prompt": artifacts.file_hash(cfg.target_files.qa_prompt)
        if cfg.target_files.llm_url and cfg.target_files.qa_prompt.is_file() else None,
    })


def qa_template(cfg: Config) -> str:
    """The prompt template that asks the endpoint for question/answer pairs (`target_files.qa_prompt`).

    Raises:
        WhoharryError: it is missing or lacks the `{passage}` placeholder.
    """
    return http.read_template(cfg.target_files.qa_prompt, ("passage",), "question prompt template")


def kinds(cfg: Config) -> tuple[str, ...]:
    """The kinds of file the stage makes: probes and completion prompts, and question/answer pairs when an
    endpoint writes them (`target_files.llm_url`)."""
    return ("probes", "completions", "qa") if cfg.target_files.llm_url else ("probes", "completions")


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/probes/`: probes_{dev,test}.jsonl, completions_{dev,test}.jsonl, with an endpoint
    configured qa_{dev,test}.jsonl (`anchors.qa`), stats.json, config.yaml and manifest.json, unless
    complete. Reads the finished split stage's folder (`whoharry run` makes it first, from the user's target).

    Raises:
        WhoharryError: no finished split, an unreadable dictionary, too few usable probes in the target
            (a key must follow enough words of its sentence), a bad question prompt template, the endpoint
            failing, or its replies giving no usable pair for a half.
    """
    stage_dir = out / NAME

    def body() -> Outcome:
        from whoharry.errors import WhoharryError

        split_dir = out / split.NAME  # made from the user's target before the run trained on its training part
        if artifacts.stage_fingerprint(split_dir) == "missing":
            raise WhoharryError(f"no held-out split in {split_dir}: the probes are made by `whoharry run`, after it")
        anchors = load_anchors(cfg.data.anchors)
        settings = cfg.target_files
        texts = {source: read_text(split_dir / name, f"{source} text")
                 for source, name in (("target", split.TRAIN_FILE), ("heldout", split.HELDOUT_FILE))}
        pools = {source: cloze_candidates(text, anchors, source, min_words=settings.probe_min_words)
                 for source, text in texts.items()}
        if not any(pools.values()):
            raise WhoharryError(f"no familiarity probe could be made: no key of {cfg.data.anchors} follows "
                                f"{settings.probe_min_words} words of its sentence in the target")
        stage_dir.mkdir(parents=True, exist_ok=True)
        stats: dict = {"candidates": {s: len(p) for s, p in pools.items()}, "keys": len(anchors)}
        chosen = []
        for half in ("dev", "test"):  # halved first, so that each half gets its share
            mine = {source: [c for c in pool if dev_or_test(c, cfg.seed) == half] for source, pool in pools.items()}
            wanted, taken = settings.probes // 2, Counter()  # one count per key over both sources
            from_heldout = min(len(mine["heldout"]), wanted // 2)
            probes = select_probes(mine["heldout"], from_heldout, settings.probes_per_key, cfg.seed, taken)
            probes += select_probes(mine["target"], wanted - len(probes), settings.probes_per_key, cfg.seed, taken)
            prompts = completion_prompts(select_probes(mine["target"] + mine["heldout"], settings.completions // 2,
                                                       1, cfg.seed + 1), anchors, texts["target"])
            if not probes or not prompts:
                raise WhoharryError(f"too few probes for a {half} half: the target has {sum(map(len, pools.values()))} "
                                    "places where a dictionary key follows enough words of its sentence; give a "
                                    "longer target, or lower target_files.probe_min_words")
            artifacts.write_jsonl(path(out, "probes", half), [c.record() for c in probes])
            artifacts.write_jsonl(path(out, "completions", half), prompts)
            stats[f"probes_{half}"] = len(probes)
            stats[f"probes_{half}_heldout"] = sum(1 for c in probes if c.source == "heldout")
            stats[f"completions_{half}"] = len(prompts)
            chosen += probes
        if cfg.target_files.llm_url:
            stats["qa"] = _write_qa(cfg, out, texts, progress)
        stats["base_top10_share"] = _top10_share(cfg, [c.record() for c in chosen], progress)
        artifacts.write_json(stage_dir / "stats.json", stats)
        log.info("probes: %d cloze probes (%d from held-out text), %d completion prompts; the base model ranks "
                 "%.0f%% of the answers in its top 10", len(chosen), sum(1 for c in chosen if c.source == "heldout"),
                 stats["completions_dev"] + stats["completions_test"], 100 * stats["base_top10_share"])
        return Outcome(inputs={"split": str(split_dir), "anchors": str(cfg.data.anchors)},
                       outputs=[path(out, kind, half).name for kind in kinds(cfg) for half in ("dev", "test")]
                       + ["stats.json"], summary=stats)

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body, collective=False)


def _top10_share(cfg: Config, probes: list[dict], progress: bool) -> float:
    """The share of probes whose answer's first token the base model ranks among its 10 most likely."""
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
    records = score_probes(base, tokenizer, probes, cfg.eval, "probes: base check", greedy=False, progress=progress)
    return sum(1 for r in records if 1 <= r["rank"] <= 10) / len(records) if records else float("nan")


def _write_qa(cfg: Config, out: Path, texts: dict[str, str], progress: bool) -> dict:
    """Ask the endpoint for question/answer pairs, passage by passage (`anchors.qa.passage_order`), until each
    half holds `target_files.qa // 2` usable pairs or the passages run out; write qa_{dev,test}.jsonl and
    return the counts. Each reply is saved as it comes (`REPLIES_FILE`), so a rerun asks only what is left."""
    from whoharry.anchors.suggest import passages
    from whoharry.errors import WhoharryError

    settings = cfg.target_files
    template = qa_template(cfg)
    client = http.ChatClient(settings.llm_url or "", settings.llm_model, settings.llm_key_env, timeout=120.0)
    pieces = {source: passages(text, settings.qa_passage_chars) for source, text in texts.items()}
    saved = artifacts.ResumeLog(out / NAME / REPLIES_FILE, fingerprint({  # what the replies depend on
        "split": artifacts.stage_fingerprint(out / split.NAME), "seed": cfg.seed, "target": cfg.eval.target_name,
        "endpoint": [settings.llm_url, settings.llm_model], "prompt": artifacts.file_hash(settings.qa_prompt),
        "qa": [settings.qa, settings.qa_per_passage, settings.qa_passage_chars]}))
    wanted, kept = settings.qa // 2, {"dev": [], "test": []}
    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    asked = 0
    order = qa.passage_order({source: len(p) for source, p in pieces.items()}, cfg.seed)
    bar = tqdm(total=2 * wanted, desc="probes: question/answer pairs", unit="pair", disable=not progress)
    for number, (source, index) in enumerate(order):
        passage = pieces[source][index]
        half = qa.half_of(passage, cfg.seed)
        if len(kept[half]) >= wanted:
            if all(len(pairs) >= wanted for pairs in kept.values()):
                break
            continue
        if asked < len(saved.done):
            reply = saved.done[asked]
        else:
            values = {"target": cfg.eval.target_name, "passage": passage, "count": str(settings.qa_per_passage)}
            reply = client.ask(http.fill_template(template, values), f"passage {number}")
            saved.append(reply)
        asked += 1
        for pair in qa.parse_pairs(reply)[: settings.qa_per_passage]:
            asked_before = " ".join(qa.words(pair["question"]))
            why = qa.usable(pair, passage) or ("repeated" if asked_before in seen else None)
            if why is None and len(kept[half]) < wanted:
                seen.add(asked_before)
                kept[half].append(qa.QAPair(pair["question"], pair["answer"], source, number))
                bar.update(1)
            elif why is not None:
                dropped[why] += 1
    bar.close()
    for half, pairs in kept.items():
        if not pairs:
            raise WhoharryError(f"the endpoint's replies for {asked} passages gave no usable question/answer pair "
                                f"for the {half} half (dropped: {dict(dropped) or 'none parsed'}); check "
                                f"{settings.qa_prompt} and target_files.llm_model")
        artifacts.write_jsonl(path(out, "qa", half), [pair.record() for pair in pairs])
    log.info("probes: %d question/answer pairs from %d passages", sum(map(len, kept.values())), asked)
    return {"passages_asked": asked, "dev": len(kept["dev"]), "test": len(kept["test"]),
            "heldout": sum(p.source == "heldout" for pairs in kept.values() for p in pairs), "dropped": dict(dropped)}
