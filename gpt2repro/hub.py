"""The Hugging Face Hub as every command meets it: a repo id is checked by huggingface_hub's own validator before
anything else, and whether the Hub answers is decided by one metadata call with a short timeout and no retries, so
that a machine that cannot reach it gets its one line in seconds instead of after huggingface_hub's download retries.

huggingface_hub is imported inside the functions: prepare_data.py, which imports this, stays light.
"""

from gpt2repro.errors import UsageError, UserError, first_line

# What a push puts on the Hub: both formats (native on main, ours on model_card.GPT2REPRO_BRANCH), or only one, on
# main. Here rather than in model_card so that settings offers the choice without importing the upload's libraries.
HUB_FORMATS = ("both", "native", "gpt2repro")
HUB_TIMEOUT = 10  # seconds for the one metadata call that decides whether the Hub is reachable


def repo_id_problem(repo_id: str) -> str | None:
    """The rule of huggingface_hub's own validator that `repo_id` breaks ("not a repo id!!"), or None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return str(e).split(": '")[0].rstrip(".")  # the validator's message ends by repeating the id
    return None


def check_repo_id(repo_id: str, flag: str, error: type[UserError] = UsageError) -> None:
    """Refuse in one short line a malformed repo id, before any network call or login check."""
    if problem := repo_id_problem(repo_id):
        raise error(f"{flag} {repo_id!r} is not a Hub repo id: {problem}")


def repo_info(repo_id: str, repo_type: str = "model", revision: str | None = None, files_metadata: bool = False):
    """The repository's metadata in one call with a short timeout (metadata calls are not retried); raises what
    huggingface_hub raises, which `failure_reason` puts in words."""
    from huggingface_hub import HfApi

    return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=files_metadata,
                             timeout=HUB_TIMEOUT)


def hub_answers(repo_id: str, refusal, repo_type: str = "model") -> bool:
    """Whether the Hub answers about `repo_id`, asked in one short call: huggingface_hub's download retries would make
    a machine that cannot reach it wait most of a minute. False (offline mode; no answer, a server error, rate
    limiting or an expired token, with a note on stderr): read the local cache only. A refusal (no such repo, gated)
    raises refusal(reason), a UserError, at once."""
    import sys

    import huggingface_hub.constants
    from huggingface_hub.errors import RepositoryNotFoundError  # GatedRepoError is one

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    try:
        repo_info(repo_id, repo_type)
    except RepositoryNotFoundError as e:
        raise refusal(failure_reason(e, repo_type)) from None
    except Exception as e:
        answer = "does not answer" if unreachable(e) else "answered with an error"
        print(f"note: the Hugging Face Hub {answer} ({failure_reason(e, repo_type)}); reading {repo_id} from the "
              "local cache", file=sys.stderr)
        return False
    return True


def unreachable(error: Exception) -> bool:
    """The Hub did not answer (no network, a refused connection, a timeout): not a refusal by the Hub."""
    import httpx2

    return isinstance(error, httpx2.TransportError)


def failure_reason(error: Exception, repo_type: str = "model") -> str:
    """Why a Hub call failed, in words: offline mode, no such repo, gated, a revision, or no answer."""
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set (offline mode); unset it to download"
    if isinstance(error, GatedRepoError):
        return "it is gated: accept its terms on the Hub and log in (hf auth login)"
    if isinstance(error, RevisionNotFoundError):
        return "no such revision"
    if isinstance(error, RepositoryNotFoundError):
        return f"no such {repo_type} repository, or it is private (log in: hf auth login)"
    why = first_line(error, with_type=True, limit=1000)
    return f"cannot reach the Hub ({why})" if unreachable(error) else why
