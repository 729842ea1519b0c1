from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin

from recsite.admin import ReadOnlyAdmin
from recommendations.models import ApiKey, EndUser, Interaction, Item, ItemFeatures, UserFeatures


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ("external_id", "title", "categories", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("external_id", "title")


@admin.register(EndUser)
class EndUserAdmin(admin.ModelAdmin):
    list_display = ("external_id", "created_at")
    search_fields = ("external_id",)


@admin.register(Interaction)
class InteractionAdmin(ReadOnlyAdmin):
    """Events are append-only: the admin shows them and never edits them."""

    list_display = ("timestamp", "user", "item", "event_type", "value", "recommendation_id")
    list_filter = ("event_type",)
    search_fields = ("user__external_id", "item__external_id")
    list_select_related = ("user", "item")
    show_full_result_count = False


@admin.register(UserFeatures)
class UserFeaturesAdmin(admin.ModelAdmin):
    list_display = ("user", "event_count", "rating_count", "last_seen")
    readonly_fields = [f.name for f in UserFeatures._meta.fields]


@admin.register(ItemFeatures)
class ItemFeaturesAdmin(admin.ModelAdmin):
    list_display = ("item", "event_count", "positive_count", "rating_count", "last_event_at")
    readonly_fields = [f.name for f in ItemFeatures._meta.fields]


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    list_display = [*APIKeyModelAdmin.list_display, "scopes"]
