from ops.cli import main

if __name__ == "__main__":  # not under multiprocessing's re-import as __mp_main__
    main()
