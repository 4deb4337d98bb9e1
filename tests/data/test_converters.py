"""UT-Zappos50K and MEDIC converters on tiny fixtures that mimic the real release layouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mscon.data import DataError, convert_medic, convert_zappos50k, load_dataset
from mscon.data.zappos import first_value, heel_inches

ZAPPOS_HEADER = "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle"
# (CID, category, subcategory, heel, closure, gender, brand folder (square tree), brand in
# image-path.mat). Brand folders ending in '.' carry %2E in the square tree and lose the dot
# in the 4:3 tree; image-path.mat lists the release's own spelling.
ZAPPOS_ROWS = [
    ("100627-72", "Shoes", "Oxfords", "", "Lace up", "Men", "Bostonian", "Bostonian"),
    (
        "7965307-5291",
        "Boots",
        "Ankle",
        "1in - 1 3/4in",
        "Zipper;Buckle",
        "Women",
        "Neil M%2E",
        "Neil M.",
    ),
    ("8012-1", "Boots", "Ankle", "3in - 3 3/4in", "", "Men;Women", "Levi's&#174;", "Levi's"),
    ("555-9", "Sandals", "Flat", "Flat", "Buckle", "Girls", "Keen", "Keen"),
    ("777-3", "Shoes", "Heels", "5in & over", "Slip-On", "Women", "Nine West", "Nine West"),
]
# Listed in the CSV and image-path.mat, missing from the release.
ZAPPOS_MISSING = ("8029595-574", "Boots", "Mid-Calf", "", "Zipper", "Boys;Girls",
                  "Pablosky Kids", "Pablosky Kids")  # fmt: skip
ZAPPOS_QUIRKS = [
    ("901-1", "Shoes", "Sneakers and Athletic Shoes", "NA", "Hook and Loop", "Boys;Girls",
     "Stride Rite", "Stride Rite"),
    ("902-2", "Slippers", "Slipper Heels", "Under 1in", "N/A", "Women;Men", "Acorn", "Acorn"),
    ("903-3", "Shoes", "Loafers", "Flat", "Slip-On", "Men", "Palette Co.", "Palette Co."),
    ("904-4", "Sandals", "Heel", "2in - 2 3/4in", "Buckle;Ankle Strap", "Women", "Truncated",
     "Truncated"),
    ZAPPOS_MISSING,
]  # fmt: skip


def _jpeg(path: Path, colour=(200, 30, 30), size=(20, 15)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=90)


def _palette_png(path: Path) -> None:
    """A palette ("P" mode) PNG, saved under the release's .jpg name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (20, 15), (200, 30, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert image.mode == "P"
    image.save(path, format="PNG")


def make_zappos(
    root: Path,
    with_mat: bool = True,
    skip_image: str | None = None,
    quirks: bool = False,
    square: bool = True,
    repeat: int = 1,
) -> Path:
    """The release layout: images(-square)/CAT/SUB/BRAND/CID.jpg, meta-data.csv, image-path.mat.

    With ``quirks``: multi-valued Gender (Boys;Girls, Women;Men), NA / N/A cells, a
    palette PNG, a truncated JPEG and the listed-but-missing Pablosky Kids boot.
    ``repeat`` copies the base rows (new CIDs) for a dataset large enough to train on.
    """
    data_dir = root / "ut-zap50k-data"
    data_dir.mkdir(parents=True)
    tree = root / ("ut-zap50k-images-square" if square else "ut-zap50k-images")
    lines, mat_paths = [ZAPPOS_HEADER], []
    rows = [
        (f"{cid.split('-')[0]}{k or ''}-{cid.split('-')[1]}", *rest)
        for k in range(repeat)
        for cid, *rest in ZAPPOS_ROWS
    ]
    if quirks:
        rows += ZAPPOS_QUIRKS
    for cid, cat, sub, heel, closure, gender, disk_brand, mat_brand in rows:
        name = cid.replace("-", ".") + ".jpg"
        if not square:
            disk_brand = disk_brand.replace("%2E", "")
        file = tree / cat / sub / disk_brand / name
        if cid == skip_image or (cat, sub, disk_brand) == ZAPPOS_MISSING[1:3] + ZAPPOS_MISSING[6:7]:
            pass
        elif disk_brand == "Palette Co.":
            _palette_png(file)
        elif disk_brand == "Truncated":
            _truncated_jpeg(file)
        else:
            _jpeg(file)
        mat_paths.append(f"{cat}/{sub}/{mat_brand}/{name}")
        lines.append(f'{cid},{cat},{sub},{heel},Padded,"{closure}","{gender}",Leather;Suede,Round')
    (data_dir / "meta-data.csv").write_text("\n".join(lines) + "\n")
    if with_mat:
        from scipy.io import savemat

        cells = np.empty((len(mat_paths), 1), dtype=object)
        for i, p in enumerate(mat_paths):
            cells[i, 0] = p
        savemat(data_dir / "image-path.mat", {"imagepath": cells})
    return root


def _names(data, column):
    return [data.classes[column][i] if i >= 0 else None for i in data.labels[column].tolist()]


def test_zappos_converter(tmp_path):
    src = make_zappos(tmp_path / "zappos")
    out = convert_zappos50k(str(src), str(tmp_path / "out"))
    data = load_dataset(str(out), image_size=8, split={"train": 0.6, "test": 0.4})
    assert len(data) == 5
    assert set(data.columns()) >= {
        "category",
        "subcategory",
        "closure",
        "gender",
        "brand",
        "heel_height",
    }
    assert _names(data, "brand") == ["Bostonian", "Neil M", "Levi's", "Keen", "Nine West"]
    assert _names(data, "gender") == ["Men", "Women", "Men+Women", "Girls", "Women"]
    assert _names(data, "closure") == ["Lace up", "Buckle+Zipper", None, "Buckle", "Slip-On"]
    assert _names(data, "material") == ["Leather"] * 5
    assert data.is_continuous("heel_height")
    heel = data.labels["heel_height"].tolist()
    assert math.isnan(heel[0]) and heel[1:] == [1.375, 3.375, 0.0, 5.5]
    assert data.images[0, 0].float().mean() > 150  # the red fixture images, read in place


@pytest.mark.parametrize("square", [True, False])
def test_zappos_real_quirks(tmp_path, square):
    src = make_zappos(tmp_path / "zappos", quirks=True, square=square)
    with pytest.warns(UserWarning) as record:
        out = convert_zappos50k(src, tmp_path / "out")
    messages = " | ".join(str(w.message) for w in record)
    assert "convert_zappos50k" in messages and "1 of 10 rows have no image" in messages
    assert "8029595-574" in messages  # the listed-but-missing Pablosky Kids boot
    assert "1 truncated image(s)" in messages and "Truncated/904.4.jpg" in messages
    assert all(w.filename == __file__ for w in record)
    with pytest.warns(UserWarning, match="1 truncated image"):
        data = load_dataset(str(out), image_size=8)
    assert len(data) == 9
    gender = _names(data, "gender")
    assert gender[5:] == ["Boys+Girls", "Men+Women", "Men", "Women"]
    assert gender[2] == "Men+Women"  # unisex is not labelled Men
    assert _names(data, "closure")[5:] == ["Hook and Loop", None, "Slip-On", "Ankle Strap+Buckle"]
    assert _names(data, "heel")[5] is None and "NA" not in data.classes["heel"]
    assert _names(data, "brand") == [
        "Bostonian", "Neil M", "Levi's", "Keen", "Nine West", "Stride Rite", "Acorn",
        "Palette Co", "Truncated",
    ]  # fmt: skip
    assert data.images[7, 0].float().mean() > 150  # the palette PNG, decoded to RGB


def test_zappos_multi_valued_policies(tmp_path):
    src = make_zappos(tmp_path / "zappos", quirks=True)
    with pytest.warns(UserWarning):
        out = convert_zappos50k(
            src, tmp_path / "a", multi_valued={"gender": "missing", "Closure": "first"}
        )
        data = load_dataset(str(out), image_size=4)
    assert _names(data, "gender")[5:7] == [None, None]
    assert _names(data, "closure")[1] == "Zipper"
    with pytest.raises(DataError, match="multi_valued: unknown column 'colour'"):
        convert_zappos50k(src, tmp_path / "b", multi_valued={"colour": "first"})
    with pytest.raises(DataError, match="gender=unisex: unknown policy"):
        convert_zappos50k(src, tmp_path / "b", multi_valued={"gender": "unisex"})


def test_zappos_cli(tmp_path, capsys):
    from mscon.cli import main

    src = make_zappos(tmp_path / "zappos", quirks=True)
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        code = main(["data", "zappos50k", str(src), "--out", str(out),
                     "--multi-valued", "gender=first"])  # fmt: skip
    assert code == 0 and "labels.csv" in capsys.readouterr().out
    assert "Men+Women" not in (out / "labels.csv").read_text().split("\n", 1)[1].split(",")
    assert main(["data", "zappos50k", str(src), "--out", str(out), "--multi-valued", "x"]) == 2
    assert "expected COLUMN=POLICY" in capsys.readouterr().err


def test_zappos_without_mat_matches_by_cid(tmp_path):
    src = make_zappos(tmp_path / "zappos", with_mat=False)
    data = load_dataset(str(convert_zappos50k(src, tmp_path / "out")), image_size=4)
    brands = [data.classes["brand"][i] for i in data.labels["brand"].tolist()]
    assert brands == ["Bostonian", "Neil M", "Levi's", "Keen", "Nine West"]


def test_zappos_drops_rows_without_images(tmp_path):
    src = make_zappos(tmp_path / "zappos", skip_image="555-9")
    with pytest.warns(UserWarning, match="convert_zappos50k: .*1 of 5 rows have no image"):
        out = convert_zappos50k(src, tmp_path / "out")
    assert len((out / "labels.csv").read_text().splitlines()) == 1 + 4


def test_zappos_errors(tmp_path):
    with pytest.raises(DataError, match="no ut-zap50k-data/meta-data.csv"):
        convert_zappos50k(tmp_path, tmp_path / "out")
    src = make_zappos(tmp_path / "zappos")
    meta = src / "ut-zap50k-data" / "meta-data.csv"
    meta.write_text(meta.read_text().replace("Gender", "Sex", 1))
    with pytest.raises(DataError, match=r"meta-data.csv: no column 'Gender'; available: CID"):
        convert_zappos50k(src, tmp_path / "out")


def test_heel_and_first_value_helpers():
    assert heel_inches("Under 1in") == 0.5 and heel_inches("  2in -  2 3/4in ") == 2.375
    assert heel_inches("4in - 4 3/4in") == 4.375 and math.isnan(heel_inches("tall"))
    assert heel_inches("6in") == 6.0
    assert first_value(" Boys;Girls ") == "Boys" and first_value("") == ""
    assert first_value("NA") == "" and first_value("null;Men") == "Men"


# The real release's header and column order; image_id holds the source and
# event_name the file name in the published rows.
MEDIC_HEADER = (
    "image_id\tevent_name\timage_path\tdamage_severity\tinformative\thumanitarian\tdisaster_types"
)
MEDIC_TASKS = {"damage_severity", "informative", "humanitarian", "disaster_types"}


def _truncated_jpeg(path: Path) -> None:
    """A JPEG cut short (Pillow decodes it only with its truncated-image tolerance)."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def make_medic(
    root: Path,
    drop_column: str | None = None,
    skip_dev: bool = False,
    quirks: bool = False,
    repeat: int = 1,
) -> Path:
    """src/MEDIC/MEDIC_{train,dev,test}.tsv + data/<source>/<event>/<file>.jpg.

    With ``quirks``: one truncated JPEG and one file that is not an image (both
    in the train split), and one source without an event folder.
    """
    release = root / "MEDIC"
    rows = {
        "train": [
            ("crisismmd", "harvey", "1", "severe", "informative",
             "infrastructure_and_utility_damage", "hurricane"),
            ("crisismmd", "harvey", "2", "", "not_informative", "not_humanitarian",
             "not_disaster"),
            ("ASONAM17_Damage_Image_Dataset", "nepal_eq", "3", "mild", "informative", "",
             "earthquake"),
        ],
        "dev": [
            ("ASONAM17_Damage_Image_Dataset", "nepal_eq", "4", "little_or_none", "informative",
             "rescue_volunteering_or_donation_effort", "earthquake"),
        ],
        "test": [
            ("crisismmd", "maria", "5", "severe", "informative",
             "affected_injured_or_dead_people", "hurricane"),
            ("crisismmd", "maria", "6", "mild", "not_informative", "not_humanitarian", "flood"),
        ],
    }  # fmt: skip
    if quirks:
        rows["train"] += [
            ("aidr_info", "", "7", "", "informative", "not_humanitarian", "fire"),
            ("crisismmd", "harvey", "truncated", "mild", "informative", "", "hurricane"),
            ("crisismmd", "harvey", "notanimage", "mild", "informative", "", "hurricane"),
        ]
        rows["test"] += [
            ("aidr_info", "", "8", "severe", "informative", "not_humanitarian", "fire"),
        ]
    for entries in rows.values():  # copies with new file names, for training
        base = [e for e in entries if e[2].isdigit()]
        entries += [(src, ev, f"{stem}r{k}", *lab) for k in range(1, repeat)
                    for src, ev, stem, *lab in base]  # fmt: skip
    header = MEDIC_HEADER.split("\t")
    for split, entries in rows.items():
        if split == "dev" and skip_dev:
            continue
        lines = []
        for source, event, stem, *labels in entries:
            file = f"{event}_{stem}.jpg" if event else f"{stem}.jpg"
            image_path = "/".join(p for p in ("data", source, event, file) if p)
            if stem == "truncated":
                _truncated_jpeg(release / image_path)
            elif stem == "notanimage":
                (release / image_path).write_text("<html>404 not found</html>")
            else:
                _jpeg(release / image_path, colour=(30, 30, 200))
            lines.append([source.split("_")[0], file, image_path, *labels])
        keep = [i for i, h in enumerate(header) if h != drop_column]
        text = ["\t".join(header[i] for i in keep)] + [
            "\t".join(line[i] for i in keep) for line in lines
        ]
        (release / f"MEDIC_{split}.tsv").write_text("\n".join(text) + "\n")
    return root


def test_medic_converter(tmp_path):
    src = make_medic(tmp_path / "medic")
    out = convert_medic(str(src), str(tmp_path / "out"))
    data = load_dataset(str(out), image_size=8)
    assert len(data) == 6
    assert data.split.tolist() == ["train", "train", "train", "val", "test", "test"]
    assert set(data.columns()) == MEDIC_TASKS | {"source", "event"}
    assert data.labels["damage_severity"][1] == -1 and data.labels["humanitarian"][2] == -1
    assert data.classes["damage_severity"] == ["little_or_none", "mild", "severe"]
    assert data.classes["source"] == ["ASONAM17_Damage_Image_Dataset", "crisismmd"]
    assert data.classes["event"] == ["harvey", "maria", "nepal_eq"]
    assert data.label_matrix(["damage_severity", "informative"]).shape == (6, 2)
    assert data.images[0, 2].float().mean() > 150


def test_medic_real_quirks(tmp_path):
    """The id columns stay out; a truncated JPEG is kept and reported; a non-image is dropped."""
    src = make_medic(tmp_path / "medic", quirks=True)
    with pytest.warns(UserWarning) as record:
        out = convert_medic(src, tmp_path / "out")
    messages = [str(w.message) for w in record]
    assert any("1 truncated image(s)" in m and "harvey_truncated.jpg" in m for m in messages), (
        messages
    )
    assert any(
        "1 file(s) are not decodable images" in m and "harvey_notanimage.jpg" in m for m in messages
    ), messages
    assert all(w.filename == __file__ for w in record)  # the converter's caller, not internals
    header, *lines = (out / "labels.csv").read_text().splitlines()
    assert header.split(",") == [
        "path", "split", "damage_severity", "informative", "humanitarian", "disaster_types",
        "source", "event",
    ]  # fmt: skip
    assert not {"image_id", "event_name"} & set(header.split(","))
    assert any("harvey_truncated.jpg" in line for line in lines)
    assert not any("notanimage" in line for line in lines)
    assert len(lines) == 9
    with pytest.warns(UserWarning, match="1 truncated image"):  # at training time: kept
        data = load_dataset(str(out), image_size=8)
    assert data.classes["source"] == ["ASONAM17_Damage_Image_Dataset", "aidr_info", "crisismmd"]
    events = [data.classes["event"][i] if i >= 0 else None for i in data.labels["event"].tolist()]
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the tolerance was scoped
    assert events.count(None) == 2  # aidr_info paths have no event folder


def test_medic_cli_exit_0(tmp_path, capsys):
    from mscon.cli import main

    src = make_medic(tmp_path / "medic", quirks=True)
    with pytest.warns(UserWarning):
        assert main(["data", "medic", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "labels.csv" in capsys.readouterr().out


def test_medic_errors(tmp_path):
    with pytest.raises(DataError, match="no MEDIC_train.tsv"):
        convert_medic(tmp_path, tmp_path / "out")
    src = make_medic(tmp_path / "a", drop_column="humanitarian")
    with pytest.raises(
        DataError, match=r"MEDIC_train.tsv: no column 'humanitarian'; available: image_id"
    ):
        convert_medic(src, tmp_path / "out")
    src = make_medic(tmp_path / "b", skip_dev=True)
    with pytest.raises(DataError, match="MEDIC_dev.tsv: no such file"):
        convert_medic(src, tmp_path / "out")


def test_medic_drops_rows_with_missing_images(tmp_path):
    src = make_medic(tmp_path / "medic")
    (src / "MEDIC" / "data" / "crisismmd" / "maria" / "maria_6.jpg").unlink()
    with pytest.warns(UserWarning, match="1 rows name a missing image"):
        out = convert_medic(src, tmp_path / "out")
    assert len(load_dataset(str(out), image_size=4)) == 5
