"""A causal LM as MLflow serves it: per row a `prompt` (the user's turn of a chat) or `messages` (a chat, a list
of {"role", "content"} turns, the assistant's answer to come); the generated answers out."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

from pipeline.config import Config
from pipeline.governance.serving import EXAMPLE_TEXTS, MODEL_ARTIFACT, Serving, invalid_input, text_problem

PROMPT_COLUMN, CHAT_COLUMN = "prompt", "messages"   # a row fills one
# a column of strings or one of chats: every row names its column (a bare list of strings would lose its column)
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", PROMPT_COLUMN, required=False),
                   ColSpec(Array(Object([Property("role", "string"), Property("content", "string")])), CHAT_COLUMN,
                           required=False)]),
    outputs=Schema([ColSpec("string", "response")]))


def request_conversation(system_prompt: str | None, number: int, row: pd.Series) -> list[dict[str, str]]:
    """A request's row as a chat; an error that names what is wrong with it (MLflow answers 400 with it). MLflow's
    schema enforcement has checked that each turn has a role and a content, both strings."""
    from pipeline.tasks.causal_lm.chat import chat, with_system

    turns, prompt = row.get(CHAT_COLUMN), row.get(PROMPT_COLUMN)
    if pd.api.types.is_list_like(turns):   # a chat; in a row without one MLflow puts None
        problems = [f"turn {turn_number}'s content is {problem}" for turn_number, turn in enumerate(turns, start=1)
                    if (problem := text_problem(turn["content"]))]
        if len(turns) == 0 or problems:
            raise invalid_input(f"Input row {number}: its {CHAT_COLUMN!r} "
                                f"{'; '.join(problems) if problems else 'is an empty chat'}.")
        return with_system(system_prompt, [{"role": t["role"], "content": t["content"]} for t in turns])
    if pd.api.types.is_scalar(prompt) and pd.isna(prompt):
        raise invalid_input(f"Input row {number} has neither a {PROMPT_COLUMN!r} (a text) nor a {CHAT_COLUMN!r} "
                            f"(a list of role and content turns).")
    if problem := text_problem(prompt):
        raise invalid_input(f"Input row {number}: its {PROMPT_COLUMN!r} is {problem}.")
    return chat(system_prompt, prompt)


class TextGenerator(mlflow.pyfunc.PythonModel):
    """The system prompt the model was trained with leads a chat without one."""

    def load_context(self, context) -> None:
        from pipeline.tasks.causal_lm.chat import ensure_pad_token
        from pipeline.training.models import load_causal_lm, load_tokenizer

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_causal_lm(model_dir)
        self.tokenizer = ensure_pad_token(load_tokenizer(model_dir))
        self.system_prompt = context.model_config.get("system_prompt")
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 32))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.tasks.causal_lm.chat import generate, prompt_ids

        if not {PROMPT_COLUMN, CHAT_COLUMN} & set(model_input.columns):   # MLflow drops the columns it does not know
            raise invalid_input(f"Expected a column {PROMPT_COLUMN!r} (texts) or {CHAT_COLUMN!r} (chats, lists of role "
                                f"and content turns), e.g. {{\"dataframe_records\": [{{\"{PROMPT_COLUMN}\": \"...\"}}]}}; "
                                f"the request has neither.")
        conversations = [request_conversation(self.system_prompt, number, row)
                         for number, (_, row) in enumerate(model_input.iterrows(), start=1)]
        answers = generate(self.model, self.tokenizer, prompt_ids(self.tokenizer, conversations), self.max_new_tokens,
                           batch_size=16)
        return pd.DataFrame({"response": answers})


def serving(config: Config) -> Serving:
    """Prompts the template makes of the example texts (a table's task), or chats of them (instructions)."""
    settings = config.task.causal_lm
    if config.data.format == "instructions":
        example = pd.DataFrame({CHAT_COLUMN: [[{"role": "user", "content": text}] for text in EXAMPLE_TEXTS]})
    else:
        example = pd.DataFrame({PROMPT_COLUMN: [settings.prompt_template.format(text=text) for text in EXAMPLE_TEXTS]})
    return Serving(example, {"system_prompt": settings.system_prompt, "max_new_tokens": settings.max_new_tokens},
                   SIGNATURE)
