"""Catalog writes: bulk upsert of items by their external id."""

from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from recommendations.models import Item


@dataclass(frozen=True)
class ItemInput:
    item_id: str
    title: str = ""
    categories: list[str] = field(default_factory=list)
    attributes: dict = field(default_factory=dict)
    active: bool = True


@dataclass(frozen=True)
class UpsertResult:
    created: int
    updated: int


def item_upsert(*, items: list[ItemInput]) -> UpsertResult:
    """Create or replace items (all fields), all or nothing. The last occurrence of a repeated id wins."""
    latest = {item.item_id: item for item in items}
    now = timezone.now()
    with transaction.atomic():
        existing = set(Item.objects.filter(external_id__in=latest).values_list("external_id", flat=True))
        Item.objects.bulk_create(
            [
                Item(
                    external_id=item.item_id,
                    title=item.title,
                    categories=list(item.categories),
                    attributes=item.attributes,
                    active=item.active,
                    updated_at=now,
                )
                for item in latest.values()
            ],
            update_conflicts=True,
            unique_fields=["external_id"],
            update_fields=["title", "categories", "attributes", "active", "updated_at"],
            batch_size=1000,
        )
    return UpsertResult(created=len(latest.keys() - existing), updated=len(existing & latest.keys()))
