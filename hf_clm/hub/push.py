"""Hub: a finished run -> a model repository (weights, tokenizer, recipe, report, model card).

What is published is :mod:`hf_clm.hub.publish`'s choice, its card :mod:`hf_clm.hub.card`'s. Everything goes
through ``huggingface_hub`` (``create_repo``, ``create_branch``, ``create_commit``); the endpoint is
the client's own (``HF_ENDPOINT``). Access is checked before any training starts, and the token is
only ever handed to the client: never printed or written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from hf_clm.data.sources import NETWORK_ERRORS
from hf_clm.errors import HfClmError, first_line
from hf_clm.hub.card import model_card
from hf_clm.hub.publish import PublishOptions, hub_model_id, publication, upload_operations
from hf_clm.recipe.licenses import license_problem, revision_problem
from hf_clm.recipe.schema import Recipe
from hf_clm.run.artifacts import write_text_atomic
from hf_clm.run.figures import byte_size
from hf_clm.run.files import MODEL_CARD

logger = logging.getLogger(__name__)


@dataclass
class PushTarget:
    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None


def checked_repo_id(repo_id: str | None) -> str:
    if not repo_id:
        raise HfClmError("no Hub repository given: set hub_model_id: OWNER/NAME (or --repo-id)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HfClmError(f"invalid Hub repository id '{repo_id}': {first_line(err)}") from None
    if repo_id.count("/") != 1:
        raise HfClmError(f"invalid Hub repository id '{repo_id}': use OWNER/NAME")
    return repo_id


def http_status(err: HfHubHTTPError) -> int | str:
    return err.response.status_code if err.response is not None else "no answer"


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the recipe's, else ``HF_TOKEN``, else the stored login."""
    token = token or get_token()
    if not token:
        raise HfClmError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' before pushing")
    return token


def check_hub_access(repo_id: str | None, token: str | None = None) -> tuple[str, str]:
    """Fail fast, before hours of training: a valid repo id and a token the Hub accepts."""
    repo_id = checked_repo_id(repo_id)
    token = resolve_token(token)
    if constants.HF_HUB_OFFLINE:
        raise HfClmError("HF_HUB_OFFLINE=1 is set, and pushing needs the Hugging Face Hub: unset it "
                         "(unset HF_HUB_OFFLINE) and push again")
    try:
        user = HfApi(token=token).whoami()
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the token (HTTP {http_status(err)}); log in again or set another "
                         f"HF_TOKEN") from None
    except NETWORK_ERRORS as err:
        raise HfClmError(f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to check the token: "
                         f"{type(err).__name__}; check the network or HF_ENDPOINT") from None
    logger.info("Hub access checked: pushing to %s as %s", repo_id, user.get("name", "?"))
    return repo_id, token


def checked_publish_recipe(recipe: Recipe) -> None:
    """What push_to_hub will publish at the end of training, checked before it starts: a license,
    and for a LoRA adapter on a local base model, the merged model to publish instead."""
    model, run = recipe.model_args, recipe.run_args
    if not run.license:
        raise HfClmError("push_to_hub publishes the model: set its license in the recipe (license: apache-2.0, or "
                         "another SPDX id), or train without push_to_hub and push with 'hf-clm push RUN --license "
                         "none' to publish it without one")
    if run.license.lower() != "none" and (problem := license_problem(run.license)):
        raise HfClmError(f"push_to_hub: {problem}; set the recipe's license key to one")
    if model.peft_method and not run.merge_adapter and not hub_model_id(model.model_name_or_path):
        raise HfClmError(f"push_to_hub: a LoRA adapter on the local model {model.model_name_or_path} cannot be "
                         f"loaded by anyone else; set merge_adapter: true to push the merged model, or train "
                         f"without push_to_hub and push with 'hf-clm push RUN --base_model OWNER/NAME'")


def recipe_push_options(recipe: Recipe) -> PublishOptions:
    """What push_to_hub publishes: a LoRA adapter on a local base is published merged."""
    model = recipe.model_args
    return PublishOptions(merged=bool(model.peft_method) and not hub_model_id(model.model_name_or_path))


def upload_listing(repo_id: str, target: PushTarget, operations: list[CommitOperationAdd]) -> str:
    """What a push would upload, file by file with sizes (``--dry_run``)."""
    width = max(len(op.path_in_repo) for op in operations)
    lines = [f"  {op.path_in_repo:<{width}}  {byte_size(op.upload_info.size):>10}" for op in operations]
    total = sum(op.upload_info.size for op in operations)
    where = f"branch {target.revision or 'main'}{', private' if target.private else ''}"
    header = f"would upload {len(operations)} files ({byte_size(total)}) to {repo_id} ({where}); dry run: nothing was sent"
    return "\n".join([header, *lines])


def push_run(run_dir: str | Path, target: PushTarget, token: str | None = None,
             options: PublishOptions | None = None, dry_run: bool = False) -> str:
    """Upload a finished run's model with its model card; returns the commit URL (with ``dry_run``,
    the list of files it would upload, and no request is made). What is published is checked
    (:func:`hf_clm.hub.publish.publication`) before any request."""
    if target.revision is not None and (problem := revision_problem(target.revision)):
        raise HfClmError(problem)
    pub = publication(run_dir, options or PublishOptions())
    repo_id = checked_repo_id(target.repo_id)
    if not dry_run:
        repo_id, token = check_hub_access(repo_id, token)
    write_text_atomic(str(model_card(pub, repo_id)), pub.model_dir / MODEL_CARD)
    operations = upload_operations(pub)
    if dry_run:
        return upload_listing(repo_id, target, operations)
    summary = pub.summary
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(repo_id, branch=target.revision, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id, operations=operations, revision=target.revision,
            commit_message=target.commit_message or f"Upload {pub.model_dir.name} (perplexity "
                                                    f"{summary['perplexity']:.2f})",
        )
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the upload to {repo_id} (HTTP {http_status(err)})") from None
    except NETWORK_ERRORS as err:
        raise HfClmError(f"the upload to {repo_id} lost the Hub ({constants.ENDPOINT}): {type(err).__name__}; "
                         f"the upload may be incomplete, push again") from None
    logger.info("Pushed %s to %s", pub.model_dir, commit.commit_url)
    return commit.commit_url


# What a run pushes when it ends: where, with which token, and what it publishes.
PushPlan = tuple[PushTarget, str, PublishOptions]


def push_target(recipe: Recipe) -> PushPlan | None:
    """With push_to_hub: what is published, the repo and the token, checked now rather than after
    training. The push itself happens once, at the end, with the package's model card, so Trainer
    does not push. The token lives in this frame only: it is taken out of the arguments Trainer
    saves (``training_args.bin`` in the run and every checkpoint) whether or not the run pushes."""
    args = recipe.training_args
    token, args.hub_token = args.hub_token, None
    if not args.push_to_hub:
        return None
    checked_publish_recipe(recipe)
    repo_id, token = check_hub_access(args.hub_model_id, token)
    args.push_to_hub = False
    return (PushTarget(repo_id, private=bool(args.hub_private_repo), revision=args.hub_revision), token,
            recipe_push_options(recipe))
