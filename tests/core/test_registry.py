import pytest

import threestudio


def test_find_returns_registered_builtin():
    cls = threestudio.find("random-camera-datamodule")
    assert cls.__name__ == "RandomCameraDataModule"


def test_register_same_name_twice_names_both_classes():
    @threestudio.register("test-registry-dup")
    class First:
        pass

    with pytest.raises(ValueError) as err:
        @threestudio.register("test-registry-dup")
        class Second:
            pass

    message = str(err.value)
    assert "test-registry-dup" in message
    assert "First" in message and "Second" in message
    assert threestudio.find("test-registry-dup") is First


def test_reregistering_the_same_class_is_allowed():
    class Same:
        pass

    threestudio.register("test-registry-same")(Same)
    threestudio.register("test-registry-same")(Same)
    assert threestudio.find("test-registry-same") is Same


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError) as err:
        threestudio.find("random-camera-datamodul")
    message = str(err.value)
    assert "Unknown module 'random-camera-datamodul'" in message
    assert "Did you mean: random-camera-datamodule" in message


def test_unknown_name_without_close_match_lists_registered():
    with pytest.raises(ValueError, match="Registered modules: .*random-multiview-camera-datamodule"):
        threestudio.find("zzzz")
