"""The testbed trainer's loss pieces: the v2v cross-entropy's shortcut, the unguided heads' look at the image, which
answer positions get guides, the queries the cheaper estimates sample, the decoder's key-value heads, where relation
looks; second stages that keep the tower, and recipes that chain stages in one command."""

import json
import math

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from alvts.demo.tasks import make_example
from alvts.demo.tasks.scenes import LOOKUP_GRID
from alvts.demo.testbed.build import build_config, build_processor
from alvts.demo.testbed.train import (
    attention_cross_entropy,
    build_parser,
    grid_cells,
    guide_targets,
    guided_answers,
    main,
    off_image_loss,
    quiet_query_groups,
    recipe_runs,
    sampled_queries,
    sampled_text,
    text_after_image,
    widen_key_value_heads,
)
from alvts.demo.train import save
from alvts.demo.training_data import ANSWER_END, TrainingStream, answer_guides, centre_token
from alvts.evaluation.inputs import encode_example


def test_attention_cross_entropy_is_the_cross_entropy_to_the_masked_softmax():
    """Value and gradients equal those of the textbook form, -sum(target * log_softmax(masked scores)), averaged over
    samples, heads and queries (float64, keys masked at random, targets only on allowed keys)."""
    torch.manual_seed(0)
    n, queries, keys, heads, dim, scaling = 3, 5, 9, 4, 8, 0.3
    q = torch.randn(n, queries, heads, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, keys, heads, dim, dtype=torch.float64, requires_grad=True)
    allowed = torch.rand(n, queries, keys) > 0.4
    allowed[..., 0] = True
    target = torch.rand(n, queries, keys, dtype=torch.float64) * allowed
    target = target / target.sum(-1, keepdim=True)

    ours = attention_cross_entropy(q, k, scaling, allowed, target)
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * scaling
    log_probs = scores.masked_fill(~allowed[:, None], float("-inf")).log_softmax(-1)
    textbook = -torch.where(target[:, None] > 0, target[:, None] * log_probs, 0).sum(-1).mean()

    torch.testing.assert_close(ours, textbook)
    for mine, theirs in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(textbook, (q, k)), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_off_image_loss_is_the_mean_negative_log_of_the_attention_off_the_image():
    """Two queries, two heads, keys [sink, image, image, text]: the attention off the image is 0.5, 0.25, 1.0 and
    0.8, so the loss is (log 2 + log 4 + 0 - log 0.8) / 4; a head all on the image still has a gradient."""
    attention = torch.tensor(
        [[[0.2, 0.3, 0.2, 0.3], [0.25, 0.5, 0.25, 0.0]], [[0.9, 0.0, 0.0, 0.1], [0.5, 0.1, 0.1, 0.3]]],
        requires_grad=True,
    )
    image = torch.tensor([[False, True, True, False]] * 2)
    loss = off_image_loss(attention, image)
    expected = (math.log(2) + math.log(4) + 0.0 - math.log(0.8)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    all_on_image = torch.tensor([[[0.0, 0.6, 0.4 - 1e-3, 1e-3]]], requires_grad=True)
    off_image_loss(all_on_image, image[:1]).backward()
    assert all_on_image.grad[0, 0, 1:3].gt(0).all()


def test_guided_answers_takes_the_end_token_only_where_the_guides_have_a_row_for_it():
    end = 9
    labels = torch.tensor([[-100, 5, 6, end, -100], [-100, -100, 5, 6, end]])
    mask = guided_answers(labels, end, torch.tensor([2, 3]))
    assert mask.tolist() == [[False, True, True, False, False], [False, False, True, True, True]]
    with pytest.raises(ValueError, match="row count"):
        guided_answers(labels, end, torch.tensor([1, 3]))


def test_number_end_guides_reading_end_tokens_and_no_others():
    """On real training items: with number_end, reading's end token is guided and lookup's six are not."""
    processor = build_processor()
    end_id = processor.tokenizer.convert_tokens_to_ids(ANSWER_END)
    stream = iter(TrainingStream(processor, ("reading", "lookup"), turns=6, number_end=True))
    reading, lookup = next(stream), next(stream)
    for item, expected_ends in ((reading, 1), (lookup, 0)):
        labels = item["labels"]
        mask = guided_answers(labels, end_id, torch.tensor([len(item["first_attention"])]))
        assert (mask & (labels == end_id)).sum() == expected_ends
        assert mask.sum() == len(item["first_attention"])


def test_text_after_image_is_every_unpadded_position_after_the_last_visual_token():
    """Image token 7, right padding 0: positions after the last 7 and inside the mask; none in a sample without one."""
    ids = torch.tensor([[1, 7, 7, 2, 3, 0], [7, 2, 7, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    padding = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert text_after_image(ids, padding, 7).tolist() == [
        [False, False, False, True, True, False],
        [False, False, False, True, True, True],
        [False] * 6,
    ]


def test_text_after_image_holds_every_answer_query_of_a_training_item():
    """On real training items the image comes first, so the queries that predict answers are all after it."""
    processor = build_processor()
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    stream = iter(TrainingStream(processor, ("reading", "lookup"), turns=6, number_end=True))
    for item in (next(stream), next(stream)):
        ids = item["input_ids"]
        after = text_after_image(ids, torch.ones_like(ids), image_id)
        answer_queries = (item["labels"] != -100).roll(-1, 1)
        assert after[answer_queries].all()
        assert after.sum() == ids.shape[1] - 1 - int((ids == image_id).nonzero()[:, 1].max())


def test_quiet_query_groups_keep_answers_apart_from_the_rest_of_the_text_with_both():
    """Text after the image at positions 3-5, answer queries at 4: both = [{4}, {3, 5}]; the others one group each."""
    text = torch.tensor([[False, False, False, True, True, True]])
    answers = torch.tensor([[False, False, False, False, True, False]])
    rest = [[False, False, False, True, False, True]]
    assert [g.tolist() for g in quiet_query_groups("both", answers, text)] == [answers.tolist(), rest]
    assert [g.tolist() for g in quiet_query_groups("text", answers, text)] == [text.tolist()]
    assert [g.tolist() for g in quiet_query_groups("answers", answers, text)] == [answers.tolist()]


def test_sampled_text_keeps_every_answer_and_a_binomial_share_of_the_rest():
    """Answers always stay and nothing outside `text` appears; of the other text, the kept count lies within five
    standard deviations of share x count; with share 1 the text comes back whole."""
    torch.manual_seed(0)
    text = torch.rand(8, 500) > 0.2
    answers = text & (torch.rand(8, 500) > 0.9)
    share, others = 0.25, int((text & ~answers).sum())
    kept = sampled_text(text, answers, share)
    assert kept[answers].all() and not kept[~text].any()
    spread = 5 * math.sqrt(others * share * (1 - share))
    assert abs(int((kept & ~answers).sum()) - share * others) < spread
    assert torch.equal(sampled_text(text, answers, 1.0), text)


def test_sampled_queries_are_a_sorted_random_share_without_repeats():
    torch.manual_seed(0)
    first, second = sampled_queries(256, 0.25), sampled_queries(256, 0.25)
    for chosen in (first, second):
        assert len(chosen) == 64 and len(set(chosen.tolist())) == 64
        assert torch.equal(chosen, chosen.sort().values) and chosen.min() >= 0 and chosen.max() < 256
    assert not torch.equal(first, second)
    assert torch.equal(sampled_queries(256, 1.0), torch.arange(256))


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_build_config_gives_the_decoder_the_asked_key_value_heads(kv_heads):
    """32-wide heads: hidden 128 has four query heads over `kv_heads` key-value heads (4: multi-head attention)."""
    text = build_config(build_processor(), kv_heads=kv_heads).text_config
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, kv_heads)
    assert text.hidden_size // text.num_attention_heads == 32


def test_widening_key_value_heads_keeps_the_logits_and_saves_as_multi_head(tmp_path):
    """A GQA testbed (two key-value heads) widened to four computes the same logits (fp32), reloads from disk as
    multi-head attention with them, and refuses a width that is not a multiple of its heads."""
    torch.manual_seed(0)
    processor = build_processor()
    model = LlavaForConditionalGeneration(build_config(processor, layers=2)).eval()
    example = make_example("lookup", 0)
    inputs = encode_example(processor, example.image, example.question)
    with torch.no_grad():
        before = model(**inputs).logits
        widen_key_value_heads(model, 4)
        torch.testing.assert_close(model(**inputs).logits, before)
        model.save_pretrained(tmp_path)
        reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
        assert reloaded.config.text_config.num_key_value_heads == 4
        torch.testing.assert_close(reloaded(**inputs).logits, before)
    with pytest.raises(ValueError, match="multiple of 4"):
        widen_key_value_heads(model, 6)


@pytest.mark.parametrize("seed", range(3))
def test_relation_can_look_at_its_answer_and_every_other_target_stays(seed):
    """In a layer where relation looks at its answer, both guided heads of a relation question look at the centre
    token of the shape its answer names (found here from the answer's words); elsewhere at answer_guides' first
    target (the anchor), and every other task's targets are the same in both kinds of layer."""
    relation, lookup = make_example("relation", seed), make_example("lookup", seed)
    guides = []
    for example in (relation, lookup):
        _, first, second = answer_guides(example.scene, example.image.size[0])
        guides.append({"first_attention": first, "second_attention": second})
    named = next(o for o in relation.scene["objects"] if f"{o['colour']} {o['shape']}" == relation.answer)
    answer_token = 1 + centre_token(named["centre"], relation.image.size[0])  # the targets' index 0 is the sink
    rows = len(guides[0]["first_attention"])
    at_answer = guide_targets(["relation", "lookup"], guides, relation_answer=True)
    at_anchor = guide_targets(["relation", "lookup"], guides, relation_answer=False)
    assert at_answer[:rows].argmax(2).tolist() == [[answer_token] * 2] * rows
    assert (at_answer[:rows].amax(2) == 1).all()
    assert torch.equal(at_anchor[:rows, 0], guides[0]["first_attention"])
    assert not torch.equal(at_anchor[:rows], at_answer[:rows])
    assert torch.equal(at_answer[rows:], at_anchor[rows:])
    assert torch.equal(at_anchor[rows:, 0], guides[1]["first_attention"])


def test_relation_answer_layers_must_be_guided_layers(tmp_path, capsys):
    """A relation answer layer that is not guided is refused with both lists named, before anything is built."""
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--guide-layers", "0,1,2", "--relation-answer-layers", "2,5"])
    assert "[5] are not --guide-layers [0, 1, 2]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_lookup_grid_beyond_the_tokens_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--lookup-grid", "8"])
    assert "--lookup-grid: a lookup grid's side must be in [1, 7]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_freeze_vision_trains_the_decoder_and_keeps_the_tower(tmp_path):
    """A second stage with --freeze-vision changes decoder weights and leaves every vision tower and projector weight
    as the checkpoint has it."""
    processor = build_processor()
    torch.manual_seed(0)
    save(LlavaForConditionalGeneration(build_config(processor, layers=2)), processor, tmp_path / "first")
    main([
        "--init-from", str(tmp_path / "first"), "--out", str(tmp_path / "second"), "--freeze-vision", "--steps", "2",
        "--batch-size", "2", "--guide-layers", "0,1", "--tasks", "lookup,relation", "--probe-per-task", "1",
        "--threads", str(torch.get_num_threads()), "--quiet-weight", "0.5",
    ])  # fmt: skip
    before = LlavaForConditionalGeneration.from_pretrained(tmp_path / "first").state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "second").state_dict()
    tower = [n for n in before if "vision_tower" in n or "multi_modal_projector" in n]
    decoder = [n for n in before if "language_model.layers" in n]
    assert tower and all(torch.equal(before[n], after[n]) for n in tower)
    assert any(not torch.equal(before[n], after[n]) for n in decoder)


@pytest.mark.parametrize(
    "flags", [["--freeze-vision"], ["--freeze-vision", "--init-from", "x", "--vision-steps", "10"]]
)
def test_freeze_vision_needs_a_checkpoint_and_no_tower_training(tmp_path, flags, capsys):
    """--freeze-vision without a checkpoint, or with steps that train the tower, is refused before anything runs."""
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), *flags])
    assert "--freeze-vision keeps a checkpoint's tower" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_recipe_trains_what_its_stages_train_one_after_the_other(tmp_path):
    """`--recipe` gives the same weights, bit for bit, as its stages run as separate commands (the second from the
    first's folder), and one training log of both stages."""
    tiny = f"--steps 2 --batch-size 2 --layers 2 --guide-layers 0,1 --tasks lookup,relation --probe-per-task 1 " \
           f"--threads {torch.get_num_threads()} --quiet-weight 0.5"  # fmt: skip
    first, second = f"{tiny} --vision-steps 1", f"{tiny} --freeze-vision --lr 5e-4"
    (tmp_path / "tiny.toml").write_text(
        f'[[stages]]\nname = "one"\nargs = "{first}"\n\n[[stages]]\nname = "two"\nargs = "{second}"\n', encoding="utf-8"
    )
    main(["--recipe", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "recipe")])
    main([*first.split(), "--out", str(tmp_path / "one")])
    main([*second.split(), "--init-from", str(tmp_path / "one"), "--out", str(tmp_path / "two")])
    by_recipe = LlavaForConditionalGeneration.from_pretrained(tmp_path / "recipe").state_dict()
    by_commands = LlavaForConditionalGeneration.from_pretrained(tmp_path / "two").state_dict()
    assert by_recipe.keys() == by_commands.keys()
    assert all(torch.equal(by_recipe[name], by_commands[name]) for name in by_recipe)
    log = json.loads((tmp_path / "recipe" / "training_log.json").read_text(encoding="utf-8"))
    assert [(stage["name"], stage["args"]["freeze_vision"]) for stage in log["stages"]] == [
        ("one", False),
        ("two", True),
    ]
    assert not (tmp_path / "recipe" / "one").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--recipe", "demo", "--steps", "5"], "--recipe gives every training flag; drop --steps"),
        (["--recipe", "nonesuch"], "no training recipe 'nonesuch': give one of ['demo']"),
    ],
)
def test_a_recipe_is_refused_with_other_flags_or_when_unknown(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_demo_recipe_trains_g25_from_scratch_then_g26_from_it(tmp_path):
    """The shipped recipe's stages are valid trainer flags, wired in turn: the first builds the model with its tower
    pretrained, the second starts from the first's folder, keeps its tower and writes the output folder; both ask
    lookups on the suite's grid."""
    (first_name, first), (second_name, second) = recipe_runs(build_parser(), "demo", tmp_path / "out", tmp_path / "w")
    assert (first_name, first.init_from, first.vision_steps > 0, first.freeze_vision) == ("g25", None, True, False)
    assert (second_name, second.init_from, second.freeze_vision) == ("g26", str(tmp_path / "w" / "g25"), True)
    assert first.lookup_grid == second.lookup_grid == LOOKUP_GRID
    assert (first.out, second.out) == (str(tmp_path / "w" / "g25"), str(tmp_path / "out"))


@pytest.mark.parametrize("grid", [4, LOOKUP_GRID])
def test_grid_cells_name_the_cell_of_every_shape_centre(grid):
    """The tower's grid-cell target at each lookup shape's centre token is that shape's (row, col)."""
    cells = grid_cells(grid)
    for seed in range(3):
        example = make_example("lookup", seed, lookup_grid=grid)
        for obj in example.scene["objects"]:
            assert cells[centre_token(obj["centre"], 448)].tolist() == [obj["row"], obj["col"]]
