"""xP3-format trees: registry, splits, mixture rates, metadata through packing."""

import json
import math

import numpy as np
import pytest
import seqio

from mtf.data import batches, languages, mixing, seqio_tasks
from tasks import mini_xp3, xp3


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def write_xp3(root, english=200, swahili=60):
    """An xP3 tree with `en` and `sw` folders of merged files."""
    write_jsonl(root / "en" / "merged_en.jsonl",
                [{"inputs": f"Question {i}: what is {i} plus one?", "targets": str(i + 1)}
                 for i in range(english)])
    write_jsonl(root / "sw" / "merged_sw.jsonl",
                [{"inputs": f"Swali {i}: {i} jumlisha moja ni ngapi?", "targets": f"{i + 1}"}
                 for i in range(swahili)])
    return root


@pytest.fixture
def xp3_tree(tmp_path):
    root = write_xp3(tmp_path / "xp3")
    # xP3x style: no merged file, per-dataset files with language / split / template.
    write_jsonl(root / "yo" / "xp3x_wiki.jsonl",
                [{"inputs": f"Ìbéèrè {i}", "targets": f"Ìdáhùn {i}", "language": "yor_Latn",
                  "dataset": "wiki", "template": "t1",
                  "split": "validation" if i % 4 == 0 else "train"} for i in range(40)])
    return root


@pytest.fixture
def registered(xp3_tree):
    names = xp3.register(str(xp3_tree), vocabulary_path=str(mini_xp3.VOCABULARY_PATH))
    return names


def texts(name, split):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1)
    return [(e["inputs_pretokenized"].decode(), e["targets_pretokenized"].decode(),
             e["language"].decode()) for e in ds.as_numpy_iterator()]


def test_registry_holds_one_task_per_language_and_the_mixtures(registered):
    assert registered == ["xp3_en", "xp3_sw", "xp3_yo"]
    for name in ("xp3", "xp3_proportional", "xp3_temperature"):
        mixture = seqio.get_mixture_or_task(name)
        assert sorted(t.name for t in mixture.tasks) == registered


def test_split_is_deterministic_disjoint_and_complete(registered):
    train, val = texts("xp3_en", "train"), texts("xp3_en", "validation")
    assert texts("xp3_en", "validation") == val
    assert not set(train) & set(val)
    assert len(train) + len(val) == 200
    assert 0 < len(val) < 20  # 1% carved, a few examples


def test_xp3x_records_own_split_and_language(registered):
    assert "xp3_yo_xp3x_wiki" not in seqio.TaskRegistry.names()  # one file: no per-file task
    val = texts("xp3_yo", "validation")
    # The record's own FLORES-200 code wins over the folder's.
    assert len(val) == 10 and {lang for *_, lang in val} == {"yor_Latn"}
    assert len(texts("xp3_yo", "train")) == 30


def test_xp3_weights_are_xmtfs():
    assert len(languages.XP3_WEIGHTS) == 46
    # The file's weights sum to 1.0137 (code up-sampled); Megatron renormalises, as seqio does.
    assert math.isclose(sum(languages.XP3_WEIGHTS.values()), 1.0137, abs_tol=1e-4)
    assert languages.XP3_WEIGHTS["en"] == 0.3924620202
    assert languages.XP3_WEIGHTS["tw"] == 0.0011195053
    assert len(languages.LOW_RESOURCE) >= 25


def test_mixture_rates(registered):
    def rates(name):
        m = seqio.get_mixture_or_task(name)
        return {t.name: m.get_rate(t) for t in m.tasks}

    xp3_rates = rates("xp3")
    assert xp3_rates["xp3_en"] / xp3_rates["xp3_sw"] == pytest.approx(0.3924620202 / 0.0059077793)
    assert xp3_rates["xp3_yo"] == languages.XP3_WEIGHTS["yo"]
    assert rates("xp3_proportional") == {"xp3_en": 200.0, "xp3_sw": 60.0, "xp3_yo": 40.0}
    temperature = rates("xp3_temperature")  # default T=2
    assert temperature["xp3_en"] == pytest.approx(200 ** 0.5)
    assert mixing.temperature_rates({"a": 100, "b": 1}, 1.0) == {"a": 100.0, "b": 1.0}
    assert mixing.proportional_rates({"a": 100, "b": 1}, cap=10) == {"a": 10.0, "b": 1.0}
    t3 = mixing.normalized(mixing.temperature_rates({"a": 1000, "b": 10}, 3.0, cap=100))
    assert t3["a"] / t3["b"] == pytest.approx((100 / 10) ** (1 / 3))


def test_mixing_options_are_gin_configurable(registered):
    import gin

    with gin.unlock_config():
        gin.parse_config("mtf.data.mixing.mixing_options.cap = 50")
    try:
        m = seqio.get_mixture_or_task("xp3_proportional")
        assert {t.name: m.get_rate(t) for t in m.tasks}["xp3_en"] == 50.0
    finally:
        gin.clear_config()


def test_language_ids_round_trip():
    for code in ("en", "sw", "nso", "code", "yo", "yor_Latn", "ace_Arab", "zho_Hant"):
        assert languages.language_from_id(languages.language_id(code)) == code
        assert 0 < languages.language_id(code) < 2 ** 31
    # Two scripts of one language are two languages; a region is dropped.
    assert languages.language_id("zho_Hans") != languages.language_id("zho_Hant")
    assert languages.language_id("pt_BR") == languages.language_id("pt")
    assert languages.base_language("zho_Hant") == "zh"
    with pytest.raises(languages.LanguageError, match="unknown language code 'xx'"):
        languages.language_id("xx")


def test_language_and_task_ids_survive_packing(registered):
    config = batches.DataConfig(mixture_or_task_name="xp3_proportional",
                                task_feature_lengths={"inputs": 64, "targets": 8},
                                pack=True, shuffle=True)
    batch = next(batches.batches(config, batch_size=16))
    seg, lang, task = (batch["decoder_segment_ids"], batch["decoder_language"],
                       batch["decoder_task"])
    ids = {languages.language_id(c): c for c in ("en", "sw", "yor_Latn")}
    task_ids = seqio_tasks.task_names(seqio.get_mixture_or_task("xp3_proportional"))
    assert seg.max() > 1, "rows should pack several examples"
    seen_langs = set()
    for row in range(seg.shape[0]):
        for s in set(seg[row][seg[row] > 0]):
            where = seg[row] == s
            assert len(set(lang[row][where])) == 1 and len(set(task[row][where])) == 1
            code = ids[int(lang[row][where][0])]
            assert task_ids[int(task[row][where][0])] == f"xp3_{code.split('_')[0][:2]}"
            seen_langs.add(code)
    assert np.all(lang[seg == 0] == 0) and np.all(task[seg == 0] == 0)
    assert len(seen_langs) >= 2


def test_xp3x_folder_gets_a_task_per_dataset_file(tmp_path):
    for dataset in ("wiki", "news"):
        write_jsonl(tmp_path / "ig" / f"{dataset}.jsonl",
                    [{"inputs": f"{dataset} {i}", "targets": "x", "language": "ibo_Latn",
                      "dataset": dataset} for i in range(30)])
    names = xp3.register(str(tmp_path), vocabulary_path=str(mini_xp3.VOCABULARY_PATH))
    assert names == ["xp3_ig"]
    assert {"xp3_ig_wiki", "xp3_ig_news"} <= set(seqio.TaskRegistry.names())
    assert mixing.size(seqio.get_mixture_or_task("xp3_ig")) == 60
    assert mixing.size(seqio.get_mixture_or_task("xp3_ig_news")) == 30
    news = texts("xp3_ig_news", "train") + texts("xp3_ig_news", "validation")
    assert len(news) == 30 and all(i.startswith("news") and lang == "ibo_Latn"
                                   for i, _, lang in news)


def test_xp3_dir_as_a_gin_macro(xp3_tree):
    import gin

    from mtf import config

    for name in ("xp3_en", "xp3_sw", "xp3_yo"):
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
    gin.parse_config(f"XP3_DIR = '{xp3_tree}'")
    try:
        config.register_xp3_from_gin()
    finally:
        gin.clear_config()
    assert {"xp3_en", "xp3_sw", "xp3_yo"} <= set(seqio.TaskRegistry.names())
    assert "xp3" in seqio.MixtureRegistry.names()


# Real xP3x folder names: FLORES-200 codes CLDR has no data for (acm, taq), one language in
# two scripts (ace, zho), and the plain English one.
XP3X_FOLDERS = ("acm_Arab", "ace_Arab", "ace_Latn", "eng_Latn", "taq_Tfng", "zho_Hans",
                "zho_Hant")


def xp3x_tree(root, n=40):
    for code in XP3X_FOLDERS:
        write_jsonl(root / code / "xp3x_flores.jsonl",
                    [{"inputs": f"{code} sentence {i}: translate", "targets": f"{code} {i}",
                      "language": code, "dataset": "flores", "template": "t",
                      "split": "train"} for i in range(n)])
    (root / "__scripts__").mkdir()  # a stray folder: skipped with a warning
    (root / "__scripts__" / "build.jsonl").write_text("not a record\n")
    (root / "README.md").write_text("stray file\n")
    return root


def test_xp3x_folder_names_register_with_their_scripts(tmp_path, caplog):
    root = xp3x_tree(tmp_path / "xp3x")
    with caplog.at_level("WARNING"):
        names = xp3.register(str(root), vocabulary_path=str(mini_xp3.VOCABULARY_PATH))
    assert names == sorted(f"xp3_{c}" for c in XP3X_FOLDERS)
    assert "__scripts__" in caplog.text and "not a language code" in caplog.text
    assert {lang for *_, lang in texts("xp3_zho_Hant", "train")} == {"zho_Hant"}
    assert languages.english_name("acm_Arab") == "Mesopotamian Arabic (Arabic)"
    assert languages.english_name("taq_Tfng") == "Tamasheq (Tifinagh)"
    # xmtf's weights by base language: the two Chinese scripts share zh's; acm, taq, ace
    # have none (left out of `xp3`, in the proportional and temperature mixtures).
    mixture = seqio.get_mixture_or_task("xp3")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == pytest.approx({"xp3_eng_Latn": languages.XP3_WEIGHTS["en"],
                                   "xp3_zho_Hans": languages.XP3_WEIGHTS["zh"] / 2,
                                   "xp3_zho_Hant": languages.XP3_WEIGHTS["zh"] / 2})
    proportional = seqio.get_mixture_or_task("xp3_proportional")
    assert {t.name for t in proportional.tasks} == set(names)


@pytest.mark.slow
def test_xp3x_tree_trains_and_reports_loss_per_code(tmp_path):
    from tests.train_helpers import metrics, run

    root = xp3x_tree(tmp_path / "xp3x", n=60)
    result = run(tmp_path / "run", MIXTURE_OR_TASK_NAME="'xp3_proportional'",
                 XP3_DIR=f"'{root}'", TRAIN_STEPS="4", CHECKPOINT_PERIOD="100")
    assert result.returncode == 0, result.stderr[-3000:]
    reported = {k.removeprefix("loss/") for m in metrics(tmp_path / "run") for k in m
                if k.startswith("loss/") and not k.startswith("loss/task/")}
    assert reported == set(XP3X_FOLDERS)


# The language part of every xP3x folder name (the dataset card's language list).
XP3X_LANGUAGES = """ace acm acq aeb afr ain ajp aka als amh apc arb arq ars ary arz asm ast avk
awa ayr azb aze azj bak bam ban bel bem ben ber bho bjn bod bos bre bua bug bul cat cbk ceb ces
cha chm chv cjk ckb code cor crh cym dan deu dik dsb dtp dyu dzo egl ell eng epo est eus ewe fao
fij fin fkv fon fra frr fry fur fuv gaz gcf gla gle glg gos got grc grn gsw guj hat hau hbs heb
hin hne hoc hrv hrx hsb hun hye ibo ido ile ilo ina ind isl ita jav jbo jpn kab kac kam kan kas
kat kaz kbp kea kha khk khm kik kin kir kmb kmr knc kon kor kur kzj lad lao lat lfn lij lim lin
lit lmo ltg ltz lua lug luo lus lvs mag mai mal mar min mkd mlt mni mos mri mya nds nld nno nob
nor nov npi nso nst nus nya oci orv ory ota pag pam pan pap pbt pcd pcm pes plt pms pol por prg
prs que quy rom ron run rus sag sah san sat scn shn sin slk slv smo sna snd som sot spa sqi srd
srp ssw sun swa swe swg swh szl tam taq tat tel tgk tgl tha tir tpi tsn tso tuk tum tur twi tzm
uig ukr umb urd uzb uzn vec vie war wol wuu xal xho ydd yid yor yue zho zsm zul""".split()


def test_every_xp3x_language_has_a_name_and_script():
    for code in XP3X_LANGUAGES:
        name = languages.english_name(code)
        assert name and name != code, code
        script = languages.script_of(code)
        folder = f"{code}_{script}"
        assert languages.normalize(folder) == folder
        assert languages.language_from_id(languages.language_id(folder)) == folder
