"""Cold start from stated taste (issue 18): taste table, neighbour mixture, old encoders, validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from icg.data.taste import parse_taste
from icg.users import TwoTowerModel, attach_taste_table, taste_table, train_user_encoder
from icg.users.taste_table import training_ratings
from icg.users.train import split_interactions
from icg.users.two_tower import TASTE_KEY, WEIGHTS_NAME
from icg.validation import InputError, check_profile

from .test_two_tower import planted_data, small_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return planted_data()


@pytest.fixture()
def model(data) -> TwoTowerModel:
    return attach_taste_table(small_model(data), data)


def test_taste_table_reads_training_ratings_only_and_finds_each_group(data) -> None:
    model = small_model(data)
    vocab = model.vocab
    split = split_interactions(data, vocab, seed=0, positive_threshold=4.0, test_fraction=0.1)
    train = training_ratings(data, vocab)
    assert len(train) == len(data.interactions) - len(split.test_users)
    held = set(zip(split.test_users.tolist(), split.test_items.tolist(), strict=True))
    kept = zip(
        vocab.users.lookup(train["user_id"]).tolist(),
        vocab.items.lookup(train["item_id"]).tolist(),
        strict=True,
    )
    assert not held & set(kept)
    table = taste_table(data, vocab)
    assert table.shape == (vocab.users.size, vocab.genres.size) and not table[0].any()
    assert not table[:, 0].any()  # the <unk> genre column
    for n in range(8):  # user u<n> is in group n % 4 and likes genre G<n % 4> most
        row = table[vocab.users.index(f"u{n}")]
        assert vocab.genres.tokens[int(row.argmax())] == f"G{n % 4}"


def test_stated_taste_mixture_equals_a_hand_computation(model) -> None:
    vocab, c = model.vocab, model.config
    text = "loves g1 and g2"
    stated = vocab.stated_taste([text])  # (1, G)
    assert stated[0, vocab.genres.index("G1")] == 1.0 and stated[0, vocab.genres.index("G2")] > 0
    table = model.user_taste
    cosine = torch.nn.functional.cosine_similarity(stated, table, dim=-1)  # (N,)
    cosine[table.norm(dim=-1) == 0] = -torch.inf
    cosine[0] = -torch.inf
    top, index = cosine.topk(c.taste_top_k)
    weights = torch.softmax(top / c.taste_temperature, dim=0)
    mixed = (weights[:, None] * model.user_id.weight[index]).sum(0)
    zero = torch.zeros(1, dtype=torch.long)
    expected = model.user_mlp(
        torch.cat([mixed[None], model.age(zero), model.gender(zero), model.occupation(zero)], dim=-1)
    )
    got = model.encode_users([None], [text])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    w, i = model.taste_neighbours(stated)
    torch.testing.assert_close(w.sum(-1), torch.ones(1))
    assert set(i[0].tolist()) == set(index.tolist())


def test_two_stated_tastes_differ_and_a_known_id_ignores_stated_taste(model) -> None:
    g0, g3, plain = model.encode_users([None, None, None], ["loves g0", "a g3 fan", "a male artist"])
    assert not torch.allclose(g0, g3, atol=1e-4)
    # the neighbours of "loves g0" are users of group 0 (who like G0), nearly all of the weight
    weights, index = model.taste_neighbours(model.vocab.stated_taste(["loves g0"]))
    group = torch.tensor([int(model.vocab.users.tokens[i][1:]) % 4 for i in index[0].tolist()])
    assert weights[0][group == 0].sum() > 0.9
    # words with no stated taste are encoded as before (id slot <unk>)
    features = model.user_features([None], ["a male artist"])
    assert features.taste is None or not features.taste.any()
    torch.testing.assert_close(plain, model.user_tower(features)[0])
    known = model.encode_users(["u1", "u1"], ["loves g0", "loves g3"])
    assert torch.equal(known[0], known[1])


def test_taste_table_is_saved_and_old_encoders_load_and_behave_as_before(
    data, model, tmp_path, caplog
) -> None:
    assert TASTE_KEY not in model.state_dict()  # training checkpoints keep their keys
    model.save_pretrained(tmp_path / "new")
    loaded = TwoTowerModel.from_pretrained(tmp_path / "new")
    assert loaded.has_taste_table and torch.equal(loaded.user_taste, model.user_taste)
    torch.testing.assert_close(
        loaded.encode_users([None], ["loves g2"]), model.encode_users([None], ["loves g2"])
    )

    old = small_model(data)  # an encoder saved before issue 18: no table in its weights
    old.save_pretrained(tmp_path / "old")
    assert TASTE_KEY not in load_file(str(tmp_path / "old" / WEIGHTS_NAME))
    reloaded = TwoTowerModel.from_pretrained(tmp_path / "old")
    assert not reloaded.has_taste_table
    with caplog.at_level(logging.WARNING, logger="icg.users.two_tower"):
        stated = reloaded.encode_users([None], ["loves g2; a male artist"])
    assert "without a taste table" in caplog.text
    torch.testing.assert_close(stated, reloaded.encode_users([None], ["a male artist"]))
    reloaded.save_pretrained(tmp_path / "old-again")  # re-saving does not add an empty table
    assert TASTE_KEY not in load_file(str(tmp_path / "old-again" / WEIGHTS_NAME))

    # attaching a table changes no weight
    attach_taste_table(reloaded, data).save_pretrained(tmp_path / "attached")
    before, after = (
        load_file(str(tmp_path / "old" / WEIGHTS_NAME)),
        load_file(str(tmp_path / "attached" / WEIGHTS_NAME)),
    )
    assert set(after) - set(before) == {TASTE_KEY}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_bad_taste_table_is_a_data_error(model, tmp_path) -> None:
    from icg.errors import DataError

    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state[TASTE_KEY] = state[TASTE_KEY][:, :2].contiguous()
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(DataError, match="taste table"):
        TwoTowerModel.from_pretrained(tmp_path)


def test_train_user_encoder_saves_the_taste_table(data, tmp_path) -> None:
    train_user_encoder(data, tmp_path, seed=0, epochs=1, batch_size=256, progress=False)
    model = TwoTowerModel.from_pretrained(tmp_path)
    assert model.has_taste_table and torch.equal(model.user_taste, taste_table(data, model.vocab))


def test_check_profile_accepts_stated_taste_and_names_what_it_accepts(model) -> None:
    vocab = model.vocab
    assert check_profile("loves g0 and g1", vocab) == "loves g0 and g1"
    assert check_profile("a g2 fan", vocab) == "a g2 fan"
    with pytest.raises(InputError) as error:
        check_profile("zzz qqq", vocab)
    assert "genre taste" in error.value.msg and "loves horror and sci-fi" in error.value.msg


def test_parse_taste_reads_fan_phrases() -> None:
    genres = ["horror", "sci-fi", "romance"]
    taste = parse_taste(
        ["a horror fan", "a horror and science fiction fan; dislikes horror", "a fan"], genres
    )
    assert taste[0].tolist() == [1.0, 0.0, 0.0]
    assert taste[1, 0] == -1.0 and taste[1, 1] > 0  # a clause overrides the fan phrase
    assert not taste[2].any()


def test_batch_user_embeddings_read_stated_taste_of_unknown_ids(model) -> None:
    """`icg batch` encodes a users table with unknown ids from their profiles: stated taste included."""
    from icg.batch.segments import user_embeddings

    embeds = user_embeddings(model, ["new1", "new2", "u1"], ["loves g0", "a g3 fan", "loves g0"])
    direct = model.encode_users([None, None, "u1"], ["loves g0", "a g3 fan", "loves g0"]).numpy()
    assert not np.allclose(embeds[0], embeds[1]) and np.allclose(embeds, direct, atol=1e-6)
