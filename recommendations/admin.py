from django import forms
from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from recommendations.auth import SCOPES
from recommendations.models import ApiKey, EndUser, Interaction, Item, ItemFeatures, UserFeatures
from recsite.admin import ReadOnlyAdmin, data_field

# The library's own key model is unused (ours, ApiKey, adds scopes): one "API keys" entry, not two.
admin.site.unregister(APIKey)

JSON_FEATURES = ["counts_by_type", "recent_items", "category_counts", "category_last_seen"]


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
class UserFeaturesAdmin(ReadOnlyAdmin):
    list_display = ("user", "event_count", "rating_count", "last_seen")
    readonly_fields = [data_field(name) for name in JSON_FEATURES]
    exclude = JSON_FEATURES


@admin.register(ItemFeatures)
class ItemFeaturesAdmin(ReadOnlyAdmin):
    list_display = ("item", "event_count", "positive_count", "rating_count", "last_event_at")


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="admin includes the others",
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "expiry_date", "revoked"]


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    list_display = [*APIKeyModelAdmin.list_display, "scopes_shown"]
    form = ApiKeyForm

    @admin.display(description="scopes")
    def scopes_shown(self, obj):
        return ", ".join(obj.scopes)
