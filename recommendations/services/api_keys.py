from recommendations.auth import SCOPES
from recommendations.models import ApiKey
from recsite.errors import ApplicationError


def api_key_create(*, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create a key; the secret is returned once and only its hash is stored."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApplicationError(
            f"Scopes must be a non-empty subset of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}."
        )
    return ApiKey.objects.create_key(name=name, scopes=sorted(set(scopes)))
